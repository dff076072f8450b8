"""ASGI middleware of the API."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware"]


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for request bodies above ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        if declared is not None and declared > self.limit:
            return await self._reject(send)
        if declared is None:
            # No declared length (chunked): read the body here, so that the 413 comes before
            # the app parses anything (FastAPI turns an error while reading the body into 400).
            return await self._buffered(scope, receive, send)
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        seen = 0
        first: Message | None = None
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                first = msg  # a disconnect: hand it to the app as it came
                break
            body = msg.get("body", b"")
            seen += len(body)
            if seen > self.limit:
                return await self._reject(send)
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replay: list[Message] = [
            first or {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        ]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)

    async def _reject(self, send: Send) -> None:
        resp = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, 413)
        await resp({"type": "http"}, None, send)  # type: ignore[arg-type]
