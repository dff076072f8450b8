"""The FastAPI application: ``create_app(settings)``; ``app`` for uvicorn (``app.main:app``).

No torch here (the API image carries no PyTorch): the registry reads JSON only
and work is enqueued by task name.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from celery import Celery
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .events import AsyncRedis, StreamSlots
from .finish_watch import FinishWatch
from .jobs import ApiError
from .logs import configure_logging, log_event
from .metrics import StoreCollector
from .objstore import ObjectStoreError
from .openapi import allowed_methods, operation_id
from .openapi import install as install_openapi
from .queue import TaskMessages, make_celery
from .registry import make_registry
from .routes import admin, checkpoints, health, jobs, previews, ui
from .settings import Settings, get_settings
from .store import connect, is_transient, store_from_settings

__all__ = ["create_app"]

log = logging.getLogger("ddpm.api")


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


_FASTAPI_BODY_ERROR = "There was an error parsing the body"


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def create_app(settings: Settings | None = None, celery: Celery | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: the environment)."""
    s = settings or get_settings()
    configure_logging(s.log_level, s.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await app.state.finish_watch.aclose()
        await app.state.aredis.aclose()

    api = FastAPI(
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        title="ddpm-service",
        version="0.1.0",
        description="DDPM image generation with a job queue. Jobs run on Celery workers; "
        "poll `GET /jobs/{id}` or stream `GET /jobs/{id}/events`.",
    )
    url = s.broker_url
    api.state.settings = s
    api.state.store = store_from_settings(s)
    api.state.bin_redis = connect(url, decode=False)
    # Event streams read Redis on the event loop: a waiting stream holds no thread, only
    # one async connection (its blocking XREAD); hence the pool's size.
    api.state.aredis = AsyncRedis(
        url, read_timeout=s.stream_keepalive + 10, max_connections=s.max_streams + 64
    )
    api.state.finish_watch = FinishWatch(api.state.aredis, api.state.store.finished_channel())
    api.state.stream_slots = StreamSlots(s.max_streams, s.max_streams_per_client)
    api.state.registry = make_registry(s, api.state.bin_redis)
    api.state.result_stores = {}  # kind -> ResultStore, made on first use (deps.get_results)
    api.state.celery = celery or make_celery(s)
    api.state.task_messages = TaskMessages(api.state.celery, s.key_prefix)
    api.state.metrics = CollectorRegistry(auto_describe=False)
    api.state.metrics.register(StoreCollector(api.state.store))

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.message}
        if exc.field or exc.status == 422:  # 422 always lists fields (the declared body)
            body["detail"] = [{"field": exc.field or "request", "reason": exc.message}]
        return JSONResponse(body, exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # loc is ("body", byte offset)
                pos = e.get("loc", ("body", "?"))[-1]
                errors.append({"field": "body", "reason": f"invalid JSON at byte {pos}"})
            else:
                field = _field(e.get("loc", ()))
                errors.append({"field": field, "reason": e.get("msg", "invalid")})
        return JSONResponse({"detail": errors}, 422)

    @api.exception_handler(redis.exceptions.ConnectionError)
    @api.exception_handler(redis.exceptions.TimeoutError)
    @api.exception_handler(OperationalError)
    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        log_event(log, "store unreachable", logging.WARNING, error=str(exc), path=request.url.path)
        return JSONResponse(
            {"detail": "the job store or broker is unreachable"}, 503, headers={"Retry-After": "5"}
        )

    @api.exception_handler(redis.exceptions.ResponseError)
    async def _redis_refused(request: Request, exc: redis.exceptions.ResponseError) -> JSONResponse:
        if not is_transient(exc):  # a bug, not a condition of the store
            raise exc
        log_event(log, "store refused a write", logging.WARNING, error=str(exc))
        return JSONResponse(
            {"detail": "the job store cannot take writes now (full or restarting)"},
            503,
            headers={"Retry-After": "5"},
        )

    @api.exception_handler(ObjectStoreError)
    async def _objects_unavailable(request: Request, exc: ObjectStoreError) -> JSONResponse:
        log_event(log, "object store failed", logging.WARNING, error=str(exc))
        return JSONResponse(
            {"detail": "the object store is unreachable"}, 503, headers={"Retry-After": "5"}
        )

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
            # FastAPI's answer to a JSON body it cannot decode (e.g. invalid UTF-8): the
            # same 422 as any other malformed JSON.
            reason = "the body is not valid JSON (UTF-8)"
            return JSONResponse({"detail": [{"field": "body", "reason": reason}]}, 422)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(api, request.url.path))
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=headers)

    for module in (jobs, checkpoints, admin, health, previews, ui):
        api.include_router(module.router)
    api.add_middleware(BodyLimitMiddleware, limit=s.max_body_bytes)
    install_openapi(api, s)
    return api


def __getattr__(name: str) -> Any:
    # ``app.main:app`` for uvicorn, built on first access so that importing is cheap.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
