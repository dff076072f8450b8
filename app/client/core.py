"""The client's I/O-free half, shared by both drivers (:mod:`.sync`, :mod:`.aio`).

Every operation (a request with its retries, a submit, following a job's event stream,
a download) is written once, as a generator that yields I/O instructions (:class:`Send`,
:class:`Open`, :class:`Line`, :class:`Close`, :class:`Sleep`, :class:`Call`) and is sent
their results, or thrown the ``httpx.TransportError`` they met. A driver carries them out
(blocking calls or awaits) and does nothing else: the retry policy, the SSE parser, the
wait loop and the job objects' logic all live here.
"""

from __future__ import annotations

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
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from .errors import ApiError, ClientError, JobCanceled, JobFailed, ServiceUnreachable, retry_after

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("ddpm.client")

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Transport errors worth another try, and those raised before the request could reach
# the server (the others may come after the server got it: the retry must be idempotent).
_RETRYABLE = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


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
    names them: ``00003_seed45.png`` per image (``.webp``, ``.jpg`` as the job's
    ``output_format``), ``grid.png``, ``trajectory.gif``."""
    result = doc.get("result") or {}

    def ext(url: str) -> str:
        return url.rsplit(".", 1)[-1]

    out = [
        (f"{im['index']:05d}_seed{im['seed']}.{ext(im['url'])}", im["url"])
        for im in result.get("images") or []
    ]
    if result.get("grid_url"):
        out.append((f"grid.{ext(result['grid_url'])}", result["grid_url"]))
    if result.get("trajectory_url"):
        out.append(("trajectory.gif", result["trajectory_url"]))
    return out


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


# -- retry policy (RETRY_STATUSES above; Retry-After: errors.retry_after) -----------------------
def backoff(attempt: int, base: float = 0.25, cap: float = 8.0) -> float:
    """Seconds to wait before retry ``attempt`` (0, 1, ...) when the server named none."""
    # Full jitter: many clients retrying together do not come back in step.
    return random.uniform(base, min(cap, base * 2**attempt))


# -- I/O instructions (what the operations yield) -----------------------------------------------
@dataclass
class Send:
    """Send a request, read the whole answer -> httpx.Response."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any = None


@dataclass
class Open:
    """Open a streamed GET -> httpx.Response (status and headers; body read if not 200)."""

    path: str
    headers: dict[str, str]
    read_timeout: float


@dataclass
class Line:
    """The next line of the open stream -> str, or None at its end."""


@dataclass
class Close:
    """Close the open stream."""


@dataclass
class Sleep:
    """Wait this long."""

    seconds: float


@dataclass
class Call:
    """Call a user callback (awaited by the async driver when it returns an awaitable)."""

    fn: Callable[..., Any]
    arg: Any


Op = Generator[Any, Any, Any]


class Run:
    """One operation as a driver carries it out. Iterating gives its instructions; the
    driver sets ``value`` (the instruction's result) or ``error`` (the transport error it
    met) before taking the next one, and finds what the operation returned in ``result``.
    ``stream`` and ``lines``: the event stream the driver holds open for it."""

    def __init__(self, op: Op) -> None:
        self.op = op
        self.value: Any = None
        self.error: Exception | None = None
        self.result: Any = None
        self.stream: Any = None
        self.lines: Any = None

    def __iter__(self) -> Run:
        return self

    def __next__(self) -> Any:
        value, error = self.value, self.error
        self.value = self.error = None
        try:
            return self.op.throw(error) if error is not None else self.op.send(value)
        except StopIteration as stop:
            self.result = stop.value
            raise StopIteration from None


class SSEParser:
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


class Core:
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
        redirect: bool = False,
    ) -> Op:
        """Send with retries; the 2xx response, else ApiError / ServiceUnreachable.

        ``ok_on_retry``: statuses that mean success when an earlier attempt may have
        reached the server (a retried cancel meeting 409, a retried delete meeting 404);
        ``redirect``: a redirect with a Location is an answer too."""
        headers = self.headers(admin)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        maybe_sent = False
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                resp = yield Send(method, path, headers, json)
            except httpx.TransportError as exc:
                maybe_sent |= not isinstance(exc, _NOT_SENT)
                if last or not isinstance(exc, _RETRYABLE):
                    raise ServiceUnreachable(self.url, exc) from None
                delay = backoff(attempt)
                log.info("%s %s: %s; retrying in %.2fs", method, path, _name(exc), delay)
                yield Sleep(delay)
                continue
            status = resp.status_code
            if status in RETRY_STATUSES and not last:
                wait = retry_after(resp)
                delay = backoff(attempt) if wait is None else wait
                if delay <= self.max_retry_wait:
                    log.info("%s %s: HTTP %d; retrying in %.2fs", method, path, status, delay)
                    yield Sleep(delay)
                    continue
            if resp.is_success or (maybe_sent and status in ok_on_retry):
                return resp
            if redirect and resp.is_redirect and "location" in resp.headers:
                return resp
            raise ApiError.from_response(resp)
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Op:
        resp = yield from self.request("GET", path)
        return resp.json()

    def submit(self, path: str, body: dict, admin: bool, idempotency_key: str | None) -> Op:
        key = idempotency_key or f"ddpm-client:{uuid.uuid4().hex}"
        resp = yield from self.request("POST", path, json=body, admin=admin, idempotency_key=key)
        return resp.json()

    def cancel(self, job_id: str) -> Op:
        yield from self.request("POST", f"/jobs/{job_id}/cancel", ok_on_retry=frozenset({409}))
        return (yield from self.get_json(f"/jobs/{job_id}"))

    def delete(self, path: str) -> Op:
        yield from self.request("DELETE", path, admin=True, ok_on_retry=frozenset({404}))

    def download(self, url: str) -> Op:
        resp = yield from self.request("GET", url, redirect=True)
        if resp.is_redirect:
            # A presigned URL of the object store: it carries its own signature, so no
            # key of ours goes with it.
            where = resp.headers["location"]
            resp = yield Send("GET", where, {}, None)
            if not resp.is_success:
                raise ApiError.from_response(resp)
        return resp.content

    def download_all(self, items: list[tuple[str, str]]) -> Op:
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
    ) -> Op:
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
                resp = yield Open(f"/jobs/{job_id}/events", headers, read_timeout)
                ctype = resp.headers.get("content-type", "")
                if resp.status_code == 429 or (
                    resp.is_success and not ctype.startswith("text/event-stream")
                ):
                    log.info(
                        "job %s: events unavailable (HTTP %d); polling", job_id, resp.status_code
                    )
                    return (yield from self.poll(doc, deadline, timeout, on_progress))
                if resp.status_code in RETRY_STATUSES:
                    raise _Retry(retry_after(resp))
                if not resp.is_success:
                    raise ApiError.from_response(resp)
                down_since, parser = None, SSEParser()
                while True:
                    line = yield Line()
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
                        yield Call(on_progress, Progress.from_dict(data))
                    elif name == "done":
                        yield Close()
                        return (yield from self.final(doc, data))
                    remaining()
                failures = 0 if got_events else failures + 1
                delay = 0.0 if got_events else backoff(failures, 0.1, 2.0)
            except (httpx.TransportError, _Retry) as exc:
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > self.reconnect_timeout:
                    cause = exc if isinstance(exc, httpx.TransportError) else RuntimeError("503")
                    raise ServiceUnreachable(self.url, cause) from None
                failures = 0 if got_events else failures + 1
                wait = exc.seconds if isinstance(exc, _Retry) else None
                delay = wait if wait is not None else backoff(failures, 0.1, 2.0)
                log.info(
                    "job %s: event stream lost (%s); reconnecting in %.2fs",
                    job_id,
                    _name(exc),
                    delay,
                )
            yield Close()
            if delay:
                yield Sleep(min(delay, remaining()))

    def poll(
        self,
        doc: dict[str, Any],
        deadline: float | None,
        timeout: float | None,
        on_progress: Callable[[Progress], Any] | None,
    ) -> Op:
        """Poll the job document until it is terminal, reporting changed progress."""
        interval, seen = self.poll_interval, None
        while True:
            doc = yield from self.get_json(f"/jobs/{doc['id']}")
            progress = doc.get("progress") or {}
            if on_progress is not None and progress.get("step") and progress != seen:
                seen = progress
                yield Call(on_progress, Progress.from_dict(progress))
            if doc["status"] in TERMINAL:
                return doc
            delay = interval
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {doc['id']} still {doc['status']} after {timeout}s")
                delay = min(delay, left)
            yield Sleep(delay)
            interval = min(interval * 1.5, 2.0)

    def final(self, doc: dict[str, Any], done: dict[str, Any]) -> Op:
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


def request_fields(given: dict[str, Any]) -> dict[str, Any]:
    """A submit method's arguments (its ``locals()``) as the request body: the fields it
    was given, without ``self`` and ``idempotency_key`` (a header, not a field)."""
    skip = ("self", "idempotency_key")
    return {k: v for k, v in given.items() if v is not None and k not in skip}


def open_image(data: bytes) -> Image.Image:
    """Decode an image with Pillow, the client's one optional dependency."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ModuleNotFoundError(
            "PIL images need Pillow: pip install 'ddpm-service-client[images]' (or pillow);"
            " Job.save() writes the files without it",
            name="PIL",
        ) from exc

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def write_files(out_dir: str | os.PathLike, files: list[tuple[str, bytes]]) -> list[Path]:
    """Write (name, bytes) pairs into ``out_dir``, each whole or not at all."""
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
class JobBase:
    """A job's last known document, and its operations: ``Job`` and ``AsyncJob`` carry
    them out, with blocking calls or awaits."""

    _client: ClientBase

    def __init__(self, client: ClientBase, doc: dict[str, Any]) -> None:
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
            items = [(n, u) for n, u in items if _stem(n) not in ("grid", "trajectory")]
        elif which != "all":  # grid or trajectory
            items = [(n, u) for n, u in items if _stem(n) == which]
            if not items:
                raise ClientError(f"job {self.id} has no {which}")
        return items

    # -- the operations behind the drivers' methods ----------------------------------------
    def _refresh(self) -> Op:
        self._doc = yield from self._client._core.get_json(f"/jobs/{self.id}")
        return self

    def _wait(self, timeout: float | None, on_progress: Callable[[Progress], Any] | None) -> Op:
        self._settle((yield from self._client._core.wait(self._doc, timeout, on_progress)))
        return self

    def _cancel(self) -> Op:
        self._doc = yield from self._client._core.cancel(self.id)
        return self

    def _files(self, which: str) -> Op:
        """The outputs ``which`` (``all``, ``images`` or one file name) as (name, bytes),
        after waiting for the job."""
        if not self.done:
            yield from self._wait(None, None)
        self._settle(self._doc)
        return (yield from self._client._core.download_all(self._outputs(which)))

    def _images(self) -> Op:
        return [open_image(data) for _, data in (yield from self._files("images"))]

    def _image(self, name: str) -> Op:
        return open_image((yield from self._files(name))[0][1])

    def _save(self, out_dir: str | os.PathLike) -> Op:
        return write_files(out_dir, (yield from self._files("all")))


# -- clients ---------------------------------------------------------------------------------
class ClientBase:
    """What ``Client`` and ``AsyncClient`` share: the settings, and the operations behind
    their methods."""

    _job_type: ClassVar[type[JobBase]]

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
        self._core = Core(
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

    def _run(self, op: Op) -> Any:
        """Carry out an operation (the driver's part)."""
        raise NotImplementedError

    def _stream_request(self, ins: Open) -> httpx.Request:
        timeout = httpx.Timeout(self._timeout_s, read=ins.read_timeout)
        return self._http.build_request("GET", ins.path, headers=ins.headers, timeout=timeout)

    # -- the operations behind the drivers' methods ----------------------------------------
    def _generate(self, given: dict[str, Any]) -> Op:
        body = request_fields(given)
        doc = yield from self._core.submit("/generate", body, False, given["idempotency_key"])
        return self._job_type(self, doc)

    def _train(
        self,
        name: str,
        options: dict[str, Any] | None,
        resume_from: str | None,
        idempotency_key: str | None,
        webhook: str | None = None,
        webhook_events: list[str] | None = None,
    ) -> Op:
        body = request_fields(
            {
                "name": name,
                "options": options or {},
                "resume_from": resume_from,
                "webhook": webhook,
                "webhook_events": webhook_events,
            }
        )
        doc = yield from self._core.submit("/train", body, True, idempotency_key)
        return self._job_type(self, doc)

    def _job(self, job_id: str) -> Op:
        return self._job_type(self, (yield from self._core.get_json(f"/jobs/{job_id}")))
