"""Server-Sent Events of a job, read from Redis with ``redis.asyncio``.

A stream costs no thread: it waits on the event loop (a blocking ``XREAD`` on an
async connection), so open streams never queue the sync routes behind them. Streams
are capped (all clients, and per client), live at most ``stream_lifetime`` seconds
(the client resumes with ``Last-Event-ID``, hinted by ``retry:``), and send a
keep-alive comment while idle. A bad ``Last-Event-ID`` gets 400 before the stream
starts. A finished job replays its events and closes after ``done``; when its event
stream is gone already, one ``done`` built from the job document closes it.

Keys (see ``app.core.store``): ``{prefix}job:{id}`` hash of JSON values and
``{prefix}job:{id}:events`` stream with fields ``event`` and ``data`` (JSON).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aredis
import redis.exceptions
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.errors import HttpError
from app.api.streaming.preview_watch import PreviewWatch
from app.core.jobs.names import TERMINAL
from app.core.jobs.previews import PREVIEW_REFRESH
from app.core.settings import Settings

__all__ = [
    "StreamSlots",
    "EventStreamResponse",
    "parse_last_event_id",
    "EVENT_ID_PATTERN",
    "SSE_EVENT_SCHEMA",
    "job_event_stream",
]

# Event ids are Redis stream ids, <ms>-<seq>. Up to 19 digits each, so always below 2^64
# (what Redis accepts); the OpenAPI document declares this pattern.
# Empty is "no id" (what an SSE client resends after an empty ``id:``).
EVENT_ID_PATTERN = r"^([0-9]{1,19}-[0-9]{1,19})?$"
_EVENT_ID = re.compile(r"([0-9]{1,19})-([0-9]{1,19})")
_EVENT_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_BATCH = 100
RETRY_AFTER = "5"

# One event as an SSE client parses it (OpenAPI 3.1: the schema of ``text/event-stream``
# describes each event).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": EVENT_ID_PATTERN, "description": "resume after it"},
        "event": {"type": "string", "enum": ["status", "progress", "done"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "status: {status}; progress: {step, total, fraction, ...}; "
            "done: {status, result?, error?}",
        },
    },
}


class StreamSlots:
    """Counts of open streams, in all and per client; ``acquire`` refuses beyond the caps."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self.by_client: Counter[str] = Counter()

    def acquire(self, client: str) -> Callable[[], None]:
        """A release function for a new slot of ``client``; HttpError 429 when full."""
        if self.open >= self.total:
            raise HttpError(
                429,
                f"too many open event streams ({self.total}); retry later",
                headers={"Retry-After": RETRY_AFTER},
            )
        if self.by_client[client] >= self.per_client:
            raise HttpError(
                429,
                f"this client has {self.per_client} open event streams already; "
                "close one or retry later",
                headers={"Retry-After": RETRY_AFTER},
            )
        self.open += 1
        self.by_client[client] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open -= 1
            self.by_client[client] -= 1
            if self.by_client[client] <= 0:
                del self.by_client[client]

        return release


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` that gives its slot back however the stream ends (also when
    the client is gone before the first byte, where the generator never runs)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type=self.media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def parse_last_event_id(value: str | None) -> str:
    """The stream id to read after: ``0-0`` when absent; HttpError 400 unless it matches
    :data:`EVENT_ID_PATTERN` (as every ``id:`` the server sends does)."""
    if not value:
        return "0-0"
    m = _EVENT_ID.fullmatch(value)
    if not m:
        raise HttpError(
            400, f"Last-Event-ID must be an event id as sent in `id:` ({EVENT_ID_PATTERN})"
        )
    return f"{int(m[1])}-{int(m[2])}"


def _frame(eid: str | None, event: str, data: str) -> bytes:
    lines = [f"id: {eid}"] if eid else []
    lines.append(f"event: {_EVENT_NAME_BAD.sub('_', event) or 'message'}")
    # data is one JSON line as written; a stray newline must not end the frame early.
    lines += [f"data: {part}" for part in data.replace("\r", "").split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def _entries(res: Any) -> list[tuple[str, str, str]]:
    out = []
    for _key, items in res or []:
        for eid, fields in items:
            out.append((eid, fields.get("event", "message"), fields.get("data", "{}")))
    return out


async def _status(r: aredis.Redis, job_key: str) -> str | None:
    raw = await r.hget(job_key, "status")
    return None if raw is None else json.loads(raw)


async def job_event_stream(
    request: Request, job_id: str, last_event_id: str | None, client: str, preview: bool = False
) -> EventStreamResponse:
    """The SSE response for ``job_id``: 400 (bad Last-Event-ID), 404 (unknown job) or 429
    (caps) before anything is streamed. With ``preview``, the stream keeps the job's
    preview flag alive while it is open (see :mod:`app.core.jobs.previews`)."""
    state = request.app.state.api
    s: Settings = state.settings
    after = parse_last_event_id(last_event_id)
    r = state.aredis.get()
    job_key = f"{s.key_prefix}job:{job_id}"
    ev_key = f"{job_key}:events"
    if await _status(r, job_key) is None:
        raise HttpError(404, f"job {job_id} not found (unknown or expired)")
    try:
        first = _entries(await r.xread({ev_key: after}, count=_BATCH))
    except redis.exceptions.ResponseError as exc:
        raise HttpError(400, f"Last-Event-ID rejected by the event store: {exc}") from None
    if client == "anon":
        # Without API keys everyone is "anon": cap per address instead (behind a proxy
        # this is the proxy's address, and the per-client cap becomes one for all).
        client = f"anon@{request.client.host if request.client else '?'}"
    release = state.stream_slots.acquire(client)
    watch = PreviewWatch(r, f"{job_key}:preview") if preview else None
    body = _stream(r, s, job_key, ev_key, after, first, watch)
    return EventStreamResponse(body, release)


async def _stream(
    r: aredis.Redis,
    s: Settings,
    job_key: str,
    ev_key: str,
    after: str,
    pending: list[tuple[str, str, str]],
    watch: PreviewWatch | None = None,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + s.stream_lifetime
    yield f"retry: {s.stream_retry_ms}\n\n".encode()
    terminal_seen = False
    while True:
        if watch is not None:
            await watch.refresh()
        for eid, event, data in pending:
            after = eid
            yield _frame(eid, event, data)
            if event == "done":
                return
        if not pending:
            # Idle: is the job still there, and is it finished?
            status = await _status(r, job_key)
            if status is None:
                return  # expired: nothing more will come
            if status in TERMINAL:
                # Its events may be gone (dropped after done), or ``done`` may be a moment
                # behind the status: look once more before answering from the document.
                if terminal_seen or not await r.exists(ev_key):
                    yield await _synthetic_done(r, job_key, status)
                    return
                terminal_seen = True
        remaining = deadline - loop.time()
        if remaining <= 0:
            yield b": stream lifetime reached; reconnect with Last-Event-ID\n\n"
            return
        wait = min(s.stream_keepalive, remaining, 0.25 if terminal_seen else remaining)
        if watch is not None:
            wait = min(wait, PREVIEW_REFRESH)
        pending = _entries(
            await r.xread({ev_key: after}, count=_BATCH, block=max(1, int(wait * 1000)))
        )
        if not pending and not terminal_seen and wait >= s.stream_keepalive:
            yield b": keep-alive\n\n"


async def _synthetic_done(r: aredis.Redis, job_key: str, status: str) -> bytes:
    result, error = await r.hmget(job_key, "result", "error")
    done: dict[str, Any] = {"status": status}
    for name, raw in (("result", result), ("error", error)):
        value = None if raw is None else json.loads(raw)
        if value is not None:
            done[name] = value
    return _frame(None, "done", json.dumps(done))
