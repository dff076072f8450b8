"""A Python client for the ddpm-service HTTP API: :class:`Client` and :class:`AsyncClient`.

>>> from app.client import Client
>>> with Client("http://127.0.0.1:8000") as c:
...     job = c.generate(count=4, seed=42, label=7).wait()
...     job.save("out")           # 00000_seed42.png ... grid.png, as `ddpm sample` names them

httpx only (Pillow for :meth:`Job.images`), no torch. Both clients run the same code:
every operation is written once, in :class:`_Core`, as a generator that yields I/O
instructions (send a request, sleep, open an event stream, read a line of it) and
receives their results; :class:`Client` carries them out with blocking calls,
:class:`AsyncClient` with awaits.

Retries: 429, 502, 503 and 504 wait for ``Retry-After`` (else back off exponentially);
transport errors back off too, including a pooled keep-alive connection that the
server closed just as a request went out (``ReadError``/``RemoteProtocolError``).
Every submit carries an ``Idempotency-Key`` that its retries reuse, so a retried
submit whose first response was lost never makes a second job.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import io
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_URL",
    "Client",
    "AsyncClient",
    "Job",
    "AsyncJob",
    "Progress",
    "ClientError",
    "ApiError",
    "ServiceUnreachable",
    "JobFailed",
    "JobCanceled",
    "output_names",
]

log = logging.getLogger("ddpm.client")

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Transport errors worth another try, and those raised before the request could reach
# the server (the others may come after the server got it: the retry must be idempotent).
_RETRYABLE = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


# -- errors ----------------------------------------------------------------------------------
class ClientError(Exception):
    """Base class of the errors this client raises."""


class ApiError(ClientError):
    """An HTTP error answer. ``field`` and ``reason`` come from the first entry of a 422
    body ``{"detail": [{"field", "reason"}]}``; other errors have ``field`` None and the
    message as ``reason``. ``errors`` holds every (field, reason) pair."""

    def __init__(
        self,
        status: int,
        field: str | None,
        reason: str,
        errors: list[tuple[str, str]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.field = field
        self.reason = reason
        self.errors = errors or ([(field, reason)] if field else [])
        self.retry_after = retry_after
        super().__init__(
            f"HTTP {status}: {field}: {reason}" if field else f"HTTP {status}: {reason}"
        )

    @classmethod
    def from_response(cls, resp: httpx.Response) -> ApiError:
        try:
            detail = resp.json().get("detail")
        except (ValueError, AttributeError):
            detail = resp.text.strip()[:200] or resp.reason_phrase
        errors: list[tuple[str, str]] = []
        if isinstance(detail, list):
            for e in detail:
                if isinstance(e, dict):
                    errors.append((str(e.get("field", "?")), str(e.get("reason", e))))
            if errors:
                return cls(resp.status_code, errors[0][0], errors[0][1], errors)
        return cls(resp.status_code, None, str(detail), retry_after=_retry_after(resp))


class ServiceUnreachable(ClientError):
    """The service could not be reached (after the retries)."""

    def __init__(self, url: str, cause: Exception) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"service unreachable at {url}: {type(cause).__name__}: {cause}")


class JobFailed(ClientError):
    """The job ended ``failed`` (or ``canceled``, :class:`JobCanceled`); ``error_type``
    and ``message`` are the job's ``error``, ``job`` the job itself."""

    def __init__(self, job: _JobBase) -> None:
        self.job = job
        err = job.error or {}
        self.status = job.status
        self.error_type = str(err.get("type") or "Error")
        self.message = str(err.get("message") or "")
        what = (
            self.message if self.error_type == "Canceled" else f"{self.error_type}: {self.message}"
        )
        super().__init__(f"job {job.id} {job.status}: {what}")


class JobCanceled(JobFailed):
    """The job was canceled."""


@dataclass(frozen=True)
class Progress:
    """One progress report: ``step`` of ``total``; training adds ``loss`` and ``lr``.
    ``data`` is the whole event."""

    step: int
    total: int
    fraction: float
    loss: float | None = None
    lr: float | None = None
    data: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        return cls(
            int(d.get("step") or 0),
            int(d.get("total") or 0),
            float(d.get("fraction") or 0.0),
            d.get("loss"),
            d.get("lr"),
            dict(d),
        )


def output_names(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(file name, URL) of a succeeded generation job's outputs, named as ``ddpm sample``
    names them: ``00003_seed45.png`` per image, ``grid.png``, ``trajectory.gif``."""
    result = doc.get("result") or {}
    out = [
        (f"{im['index']:05d}_seed{im['seed']}.png", im["url"]) for im in result.get("images") or []
    ]
    if result.get("grid_url"):
        out.append(("grid.png", result["grid_url"]))
    if result.get("trajectory_url"):
        out.append(("trajectory.gif", result["trajectory_url"]))
    return out


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _backoff(attempt: int, base: float = 0.25, cap: float = 8.0) -> float:
    # Full jitter: many clients retrying together do not come back in step.
    return random.uniform(base, min(cap, base * 2**attempt))


# -- I/O instructions (what the operations yield) -----------------------------------------------
@dataclass
class _Send:
    """Send a request, read the whole answer -> httpx.Response."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any = None


@dataclass
class _Open:
    """Open a streamed GET -> httpx.Response (status and headers; body read if not 200)."""

    path: str
    headers: dict[str, str]
    read_timeout: float


@dataclass
class _Line:
    """The next line of the open stream -> str, or None at its end."""


@dataclass
class _Close:
    """Close the open stream."""


@dataclass
class _Sleep:
    seconds: float


@dataclass
class _Call:
    """Call a user callback (awaited by the async driver when it returns an awaitable)."""

    fn: Callable[..., Any]
    arg: Any


_Op = Generator[Any, Any, Any]


class _SSE:
    """Incremental Server-Sent Events parser: feed lines, get (id, event, data) per event."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.event: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str, str] | None:
        if not line:
            if not self.data and self.event is None:
                return None
            out = (self.id, self.event or "message", "\n".join(self.data))
            self.event, self.data = None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self.id = value
        elif name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


class _Core:
    """Request building, retries, response parsing and the wait loop, free of I/O."""

    def __init__(
        self,
        url: str | None,
        api_key: str | None,
        admin_token: str | None,
        max_retries: int,
        max_retry_wait: float,
        poll_interval: float,
        reconnect_timeout: float,
        stream_read_timeout: float,
    ) -> None:
        self.url = (url or os.environ.get("DDPM_URL") or DEFAULT_URL).rstrip("/")
        try:
            parsed = httpx.URL(self.url) if "://" in self.url else None
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ClientError(f"invalid service URL {self.url!r} (want http://host:port)")
        self.api_key = api_key if api_key is not None else os.environ.get("DDPM_API_KEY")
        self.admin_token = (
            admin_token if admin_token is not None else os.environ.get("DDPM_ADMIN_TOKEN")
        )
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.poll_interval = poll_interval
        self.reconnect_timeout = reconnect_timeout
        self.stream_read_timeout = stream_read_timeout

    def headers(self, admin: bool = False) -> dict[str, str]:
        if admin:
            if not self.admin_token:
                raise ClientError("this needs the admin token (admin_token= or DDPM_ADMIN_TOKEN)")
            return {"Authorization": f"Bearer {self.admin_token}"}
        # The API accepts the admin token wherever a key is needed.
        key = self.api_key or self.admin_token
        return {"X-API-Key": key} if key else {}

    # -- requests with retries ------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        admin: bool = False,
        idempotency_key: str | None = None,
        ok_on_retry: frozenset[int] = frozenset(),
    ) -> _Op:
        """Send with retries; the 2xx response, else ApiError / ServiceUnreachable.

        ``ok_on_retry``: statuses that mean success when an earlier attempt may have
        reached the server (a retried cancel meeting 409, a retried delete meeting 404)."""
        headers = self.headers(admin)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        maybe_sent = False
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                resp = yield _Send(method, path, headers, json)
            except httpx.TransportError as exc:
                maybe_sent |= not isinstance(exc, _NOT_SENT)
                if last or not isinstance(exc, _RETRYABLE):
                    raise ServiceUnreachable(self.url, exc) from None
                delay = _backoff(attempt)
                log.info("%s %s: %s; retrying in %.2fs", method, path, _name(exc), delay)
                yield _Sleep(delay)
                continue
            status = resp.status_code
            if status in RETRY_STATUSES and not last:
                wait = _retry_after(resp)
                delay = _backoff(attempt) if wait is None else wait
                if delay <= self.max_retry_wait:
                    log.info("%s %s: HTTP %d; retrying in %.2fs", method, path, status, delay)
                    yield _Sleep(delay)
                    continue
            if resp.is_success or (maybe_sent and status in ok_on_retry):
                return resp
            raise ApiError.from_response(resp)
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> _Op:
        resp = yield from self.request("GET", path)
        return resp.json()

    def submit(self, path: str, body: dict, admin: bool, idempotency_key: str | None) -> _Op:
        key = idempotency_key or f"ddpm-client:{uuid.uuid4().hex}"
        resp = yield from self.request("POST", path, json=body, admin=admin, idempotency_key=key)
        return resp.json()

    def cancel(self, job_id: str) -> _Op:
        yield from self.request("POST", f"/jobs/{job_id}/cancel", ok_on_retry=frozenset({409}))
        return (yield from self.get_json(f"/jobs/{job_id}"))

    def delete(self, path: str) -> _Op:
        yield from self.request("DELETE", path, admin=True, ok_on_retry=frozenset({404}))

    def download(self, url: str) -> _Op:
        resp = yield from self.request("GET", url)
        return resp.content

    def download_all(self, items: list[tuple[str, str]]) -> _Op:
        out = []
        for name, url in items:
            out.append((name, (yield from self.download(url))))
        return out

    # -- waiting --------------------------------------------------------------------------
    def wait(
        self,
        doc: dict[str, Any],
        timeout: float | None,
        on_progress: Callable[[Progress], Any] | None,
    ) -> _Op:
        """Follow the job's event stream until its ``done`` event; the final job document.

        A stream that ends or breaks is reopened with ``Last-Event-ID`` (so no event is
        delivered twice); while the API is unreachable reconnects back off, for at most
        ``reconnect_timeout`` seconds. A 429 (too many streams) or an answer that is not
        an event stream switches to polling ``GET /jobs/{id}``."""
        job_id = doc["id"]
        if doc.get("status") in TERMINAL:
            return doc
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float:
            if deadline is None:
                return float("inf")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} still {doc.get('status')} after {timeout}s")
            return left

        last_id: str | None = None
        failures = 0
        down_since: float | None = None
        while True:
            headers = self.headers() | {"Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            read_timeout = min(self.stream_read_timeout, remaining() + 0.05)
            got_events = False
            try:
                resp = yield _Open(f"/jobs/{job_id}/events", headers, read_timeout)
                ctype = resp.headers.get("content-type", "")
                if resp.status_code == 429 or (
                    resp.is_success and not ctype.startswith("text/event-stream")
                ):
                    log.info(
                        "job %s: events unavailable (HTTP %d); polling", job_id, resp.status_code
                    )
                    return (yield from self.poll(doc, deadline, timeout, on_progress))
                if resp.status_code in RETRY_STATUSES:
                    raise _Retry(_retry_after(resp))
                if not resp.is_success:
                    raise ApiError.from_response(resp)
                down_since, parser = None, _SSE()
                while True:
                    line = yield _Line()
                    if line is None:
                        break  # the server ended the stream (lifetime cap): reopen it
                    event = parser.feed(line)
                    if event is None:
                        remaining()
                        continue
                    eid, name, raw = event
                    got_events = True
                    last_id = eid or last_id
                    data = json.loads(raw) if raw else {}
                    if name == "status" and data.get("status"):
                        doc = doc | {"status": data["status"]}
                    elif name == "progress" and on_progress is not None:
                        yield _Call(on_progress, Progress.from_dict(data))
                    elif name == "done":
                        yield _Close()
                        return (yield from self.final(doc, data))
                    remaining()
                failures = 0 if got_events else failures + 1
                delay = 0.0 if got_events else _backoff(failures, 0.1, 2.0)
            except (httpx.TransportError, _Retry) as exc:
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > self.reconnect_timeout:
                    cause = exc if isinstance(exc, httpx.TransportError) else RuntimeError("503")
                    raise ServiceUnreachable(self.url, cause) from None
                failures = 0 if got_events else failures + 1
                wait = exc.seconds if isinstance(exc, _Retry) else None
                delay = wait if wait is not None else _backoff(failures, 0.1, 2.0)
                log.info(
                    "job %s: event stream lost (%s); reconnecting in %.2fs",
                    job_id,
                    _name(exc),
                    delay,
                )
            yield _Close()
            if delay:
                yield _Sleep(min(delay, remaining()))

    def poll(
        self,
        doc: dict[str, Any],
        deadline: float | None,
        timeout: float | None,
        on_progress: Callable[[Progress], Any] | None,
    ) -> _Op:
        """Poll the job document until it is terminal, reporting changed progress."""
        interval, seen = self.poll_interval, None
        while True:
            doc = yield from self.get_json(f"/jobs/{doc['id']}")
            progress = doc.get("progress") or {}
            if on_progress is not None and progress.get("step") and progress != seen:
                seen = progress
                yield _Call(on_progress, Progress.from_dict(progress))
            if doc["status"] in TERMINAL:
                return doc
            delay = interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {doc['id']} still {doc['status']} after {timeout}s")
                delay = min(delay, left)
            yield _Sleep(delay)
            interval = min(interval * 1.5, 2.0)

    def final(self, doc: dict[str, Any], done: dict[str, Any]) -> _Op:
        """The document after a ``done`` event: fetched again for the full record, or
        completed from the event's data when that fails (the job expired in between, the
        API went away)."""
        try:
            return (yield from self.get_json(f"/jobs/{doc['id']}"))
        except (ApiError, ServiceUnreachable) as exc:
            if isinstance(exc, ApiError) and exc.status != 404:
                raise
            return doc | {k: done[k] for k in ("status", "result", "error") if k in done}


class _Retry(Exception):
    """An event stream answered 502/503/504: reconnect after ``seconds`` (None: back off)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds


def _name(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _generate_body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _open_image(data: bytes) -> Image.Image:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _write(out_dir: str | os.PathLike, files: list[tuple[str, bytes]]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files:
        tmp = out / f".{name}.part"
        tmp.write_bytes(data)
        tmp.replace(out / name)
        paths.append(out / name)
    return paths


# -- jobs ------------------------------------------------------------------------------------
class _JobBase:
    """The parts of a job that need no I/O: its last known document."""

    def __init__(self, client: Any, doc: dict[str, Any]) -> None:
        self._client = client
        self._doc = doc

    @property
    def doc(self) -> dict[str, Any]:
        """The job document as last fetched (see ``JobDocument`` in the API)."""
        return self._doc

    @property
    def id(self) -> str:
        return self._doc["id"]

    @property
    def kind(self) -> str:
        return self._doc["kind"]

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``canceled`` (as last seen)."""
        return self._doc["status"]

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def progress(self) -> Progress:
        return Progress.from_dict(self._doc.get("progress") or {})

    @property
    def request(self) -> dict[str, Any]:
        """The normalised request: resolved seed and ``checkpoint@version``."""
        return self._doc.get("request") or {}

    @property
    def result(self) -> dict[str, Any] | None:
        return self._doc.get("result")

    @property
    def error(self) -> dict[str, Any] | None:
        return self._doc.get("error")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.kind} {self.status}>"

    def _settle(self, doc: dict[str, Any]) -> None:
        """Take ``doc``; raise JobFailed/JobCanceled when the job did not succeed."""
        self._doc = doc
        if self.status == "canceled":
            raise JobCanceled(self)
        if self.status == "failed":
            raise JobFailed(self)

    def _outputs(self, which: str) -> list[tuple[str, str]]:
        items = output_names(self._doc)
        if which == "images":
            items = [(n, u) for n, u in items if n not in ("grid.png", "trajectory.gif")]
        elif which != "all":
            items = [(n, u) for n, u in items if n == which]
            if not items:
                raise ClientError(f"job {self.id} has no {which}")
        return items


class Job(_JobBase):
    """A job of a :class:`Client`. Results wait for the job to finish first."""

    _client: Client

    def refresh(self) -> Job:
        """Fetch the current document."""
        self._doc = self._client._run(self._client._core.get_json(f"/jobs/{self.id}"))
        return self

    def wait(
        self, timeout: float | None = None, on_progress: Callable[[Progress], Any] | None = None
    ) -> Job:
        """Block until the job finishes (following its event stream); ``on_progress`` gets
        each :class:`Progress`. Raises JobFailed / JobCanceled, or TimeoutError."""
        self._settle(self._client._run(self._client._core.wait(self._doc, timeout, on_progress)))
        return self

    def cancel(self) -> Job:
        """Cancel: a queued job never starts, a running one stops at its next step.
        ApiError 409 when it had already finished."""
        self._doc = self._client._run(self._client._core.cancel(self.id))
        return self

    def _files(self, which: str) -> list[tuple[str, bytes]]:
        if not self.done:
            self.wait()
        self._settle(self._doc)
        return self._client._run(self._client._core.download_all(self._outputs(which)))

    def images(self) -> list[Image.Image]:
        """The images as PIL images, in order (waits for the job)."""
        return [_open_image(b) for _, b in self._files("images")]

    def grid(self) -> Image.Image:
        """All images tiled in one PIL image (waits for the job)."""
        return _open_image(self._files("grid.png")[0][1])

    def trajectory(self) -> Image.Image:
        """The animated denoising GIF (``trajectory_frames`` > 0) as a PIL image."""
        return _open_image(self._files("trajectory.gif")[0][1])

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write the images, ``grid.png`` and any ``trajectory.gif`` into ``out_dir`` under
        the names ``ddpm sample`` uses (waits for the job); the paths written."""
        return _write(out_dir, self._files("all"))


class AsyncJob(_JobBase):
    """A job of an :class:`AsyncClient`: :class:`Job`'s methods, as coroutines."""

    _client: AsyncClient

    async def refresh(self) -> AsyncJob:
        self._doc = await self._client._run(self._client._core.get_json(f"/jobs/{self.id}"))
        return self

    async def wait(
        self, timeout: float | None = None, on_progress: Callable[[Progress], Any] | None = None
    ) -> AsyncJob:
        """As :meth:`Job.wait`; ``on_progress`` may also be a coroutine function."""
        doc = await self._client._run(self._client._core.wait(self._doc, timeout, on_progress))
        self._settle(doc)
        return self

    async def cancel(self) -> AsyncJob:
        self._doc = await self._client._run(self._client._core.cancel(self.id))
        return self

    async def _files(self, which: str) -> list[tuple[str, bytes]]:
        if not self.done:
            await self.wait()
        self._settle(self._doc)
        return await self._client._run(self._client._core.download_all(self._outputs(which)))

    async def images(self) -> list[Image.Image]:
        return [_open_image(b) for _, b in await self._files("images")]

    async def grid(self) -> Image.Image:
        return _open_image((await self._files("grid.png"))[0][1])

    async def trajectory(self) -> Image.Image:
        return _open_image((await self._files("trajectory.gif"))[0][1])

    async def save(self, out_dir: str | os.PathLike) -> list[Path]:
        return _write(out_dir, await self._files("all"))


# -- clients ---------------------------------------------------------------------------------
class _ClientBase:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        admin_token: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        max_retry_wait: float = 60.0,
        poll_interval: float = 0.5,
        reconnect_timeout: float = 60.0,
        stream_read_timeout: float = 30.0,
    ) -> None:
        """``url`` defaults to ``$DDPM_URL`` (else http://127.0.0.1:8000), ``api_key`` to
        ``$DDPM_API_KEY``, ``admin_token`` to ``$DDPM_ADMIN_TOKEN``. ``timeout``: seconds per
        request; ``max_retries``: retries of one request; ``max_retry_wait``: the longest
        Retry-After honoured; ``reconnect_timeout``: how long :meth:`Job.wait` keeps
        reconnecting to an unreachable API."""
        self._core = _Core(
            url,
            api_key,
            admin_token,
            max_retries,
            max_retry_wait,
            poll_interval,
            reconnect_timeout,
            stream_read_timeout,
        )
        self._timeout_s = timeout
        self._http = self._make_http()

    def _make_http(self) -> Any:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return self._core.url

    def _http_args(self) -> dict[str, Any]:
        return {
            "base_url": self._core.url,
            "timeout": self._timeout_s,
            "headers": {"User-Agent": "ddpm-client/0.1"},
        }


class Client(_ClientBase):
    """A blocking client of the ddpm-service API (a context manager)."""

    _http: httpx.Client

    def _make_http(self) -> httpx.Client:
        return httpx.Client(**self._http_args())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: _Op) -> Any:
        """Carry out an operation's I/O instructions with blocking calls."""
        stream: httpx.Response | None = None
        lines = None
        value: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    ins = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                try:
                    if isinstance(ins, _Send):
                        value = self._http.request(
                            ins.method, ins.path, json=ins.json, headers=ins.headers
                        )
                    elif isinstance(ins, _Line):
                        value = next(lines, None)  # type: ignore[arg-type]
                    elif isinstance(ins, _Open):
                        timeout = httpx.Timeout(self._timeout_s, read=ins.read_timeout)
                        req = self._http.build_request(
                            "GET", ins.path, headers=ins.headers, timeout=timeout
                        )
                        stream = value = self._http.send(req, stream=True)
                        if stream.status_code != 200:
                            stream.read()
                        lines = stream.iter_lines()
                    elif isinstance(ins, _Close):
                        if stream is not None:
                            stream.close()
                        stream = lines = None
                    elif isinstance(ins, _Sleep):
                        time.sleep(ins.seconds)
                    elif isinstance(ins, _Call):
                        value = ins.fn(ins.arg)
                except httpx.TransportError as exc:
                    error = exc
        finally:
            if stream is not None:
                stream.close()
            op.close()

    def generate(
        self,
        count: int = 1,
        *,
        seed: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        checkpoint: str | None = None,
        label: int | None = None,
        guidance_scale: float | None = None,
        use_ema: bool | None = None,
        trajectory_frames: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a generation job; unset options take the checkpoint's defaults and image
        i uses seed+i. Each call makes a fresh ``Idempotency-Key`` that its retries reuse;
        pass your own to make a submit safe to repeat across processes."""
        body = _generate_body(
            count=count, seed=seed, steps=steps, sampler=sampler, eta=eta,
            checkpoint=checkpoint, label=label, guidance_scale=guidance_scale,
            use_ema=use_ema, trajectory_frames=trajectory_frames,
        )  # fmt: skip
        return Job(self, self._run(self._core.submit("/generate", body, False, idempotency_key)))

    def train(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        resume_from: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Start a training run (admin) that publishes ``name@N+1``; ``options`` are the
        API's training options (``TrainOptions``)."""
        body = _generate_body(name=name, options=options or {}, resume_from=resume_from)
        return Job(self, self._run(self._core.submit("/train", body, True, idempotency_key)))

    def job(self, job_id: str) -> Job:
        """An existing job by id (ApiError 404 when unknown or expired)."""
        return Job(self, self._run(self._core.get_json(f"/jobs/{job_id}")))

    def checkpoints(self) -> list[dict[str, Any]]:
        """The registry: every checkpoint with its versions."""
        return self._run(self._core.get_json("/checkpoints"))

    def checkpoint(self, name: str) -> dict[str, Any]:
        """One checkpoint's versions, configs and metadata."""
        return self._run(self._core.get_json(f"/checkpoints/{name}"))

    def delete_checkpoint(self, ref: str) -> None:
        """Delete version ``name@version`` (admin)."""
        self._run(self._core.delete(f"/checkpoints/{ref}"))


class AsyncClient(_ClientBase):
    """The asyncio twin of :class:`Client` (an async context manager)."""

    _http: httpx.AsyncClient

    def _make_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self._http_args())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: _Op) -> Any:
        """Carry out an operation's I/O instructions with awaits."""
        stream: httpx.Response | None = None
        lines = None
        value: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    ins = op.throw(error) if error is not None else op.send(value)
                except StopIteration as stop:
                    return stop.value
                value, error = None, None
                try:
                    if isinstance(ins, _Send):
                        value = await self._http.request(
                            ins.method, ins.path, json=ins.json, headers=ins.headers
                        )
                    elif isinstance(ins, _Line):
                        value = await anext(lines, None)  # type: ignore[arg-type]
                    elif isinstance(ins, _Open):
                        timeout = httpx.Timeout(self._timeout_s, read=ins.read_timeout)
                        req = self._http.build_request(
                            "GET", ins.path, headers=ins.headers, timeout=timeout
                        )
                        stream = value = await self._http.send(req, stream=True)
                        if stream.status_code != 200:
                            await stream.aread()
                        lines = stream.aiter_lines()
                    elif isinstance(ins, _Close):
                        if stream is not None:
                            await stream.aclose()
                        stream = lines = None
                    elif isinstance(ins, _Sleep):
                        await asyncio.sleep(ins.seconds)
                    elif isinstance(ins, _Call):
                        value = ins.fn(ins.arg)
                        if inspect.isawaitable(value):
                            value = await value
                except httpx.TransportError as exc:
                    error = exc
        finally:
            if stream is not None:
                await stream.aclose()
            op.close()

    async def generate(
        self,
        count: int = 1,
        *,
        seed: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        checkpoint: str | None = None,
        label: int | None = None,
        guidance_scale: float | None = None,
        use_ema: bool | None = None,
        trajectory_frames: int | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncJob:
        """As :meth:`Client.generate`."""
        body = _generate_body(
            count=count, seed=seed, steps=steps, sampler=sampler, eta=eta,
            checkpoint=checkpoint, label=label, guidance_scale=guidance_scale,
            use_ema=use_ema, trajectory_frames=trajectory_frames,
        )  # fmt: skip
        doc = await self._run(self._core.submit("/generate", body, False, idempotency_key))
        return AsyncJob(self, doc)

    async def train(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        resume_from: str | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncJob:
        """As :meth:`Client.generate`."""
        body = _generate_body(name=name, options=options or {}, resume_from=resume_from)
        return AsyncJob(
            self, await self._run(self._core.submit("/train", body, True, idempotency_key))
        )

    async def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, await self._run(self._core.get_json(f"/jobs/{job_id}")))

    async def checkpoints(self) -> list[dict[str, Any]]:
        return await self._run(self._core.get_json("/checkpoints"))

    async def checkpoint(self, name: str) -> dict[str, Any]:
        return await self._run(self._core.get_json(f"/checkpoints/{name}"))

    async def delete_checkpoint(self, ref: str) -> None:
        await self._run(self._core.delete(f"/checkpoints/{ref}"))
