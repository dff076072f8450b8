"""Generation jobs: submit, poll, stream events, cancel, fetch results."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import (
    ClientDep,
    MessagesDep,
    RegistryDep,
    ResultsDep,
    SettingsDep,
    StoreDep,
    require_api_key,
)
from app.api.errors import HttpError
from app.api.openapi import JOB_LINKS, errors
from app.api.params import IDEM_RE, TRACEPARENT, JobId
from app.api.schemas import JobDocument
from app.api.services.documents import cancel_job, document_response, present, unknown_job
from app.api.services.submit import Submitted, asubmit_job, normalise_generate, submit_job
from app.api.streaming.events import (
    EVENT_ID_PATTERN,
    SSE_EVENT_SCHEMA,
    EventStreamResponse,
    job_event_stream,
)
from app.core.jobs.deadline import job_deadline
from app.core.jobs.names import TERMINAL
from app.core.jobs.spec import GenerateRequest
from app.core.jobs.webhook import stored_webhook
from app.core.settings import Settings
from app.core.storage.results import DiskResults, ObjectResults, ResultStore, media_type
from app.core.store import JobStore
from app.core.tracing import carrier, request_span
from ddpm_core.config.formats import IMAGE_FORMATS

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["jobs"])

MAX_WAIT = 60.0


_LOCATION = {
    "Location": {"description": "/jobs/{id}", "schema": {"type": "string"}, "required": True}
}
_PREFERENCE_APPLIED = {
    "Preference-Applied": {
        "description": "`wait=N` when the request's `Prefer: wait=N` was honoured",
        "schema": {"type": "string"},
    }
}
_UNKNOWN_JOB = (404, "unknown or expired job")
_BINARY = {"schema": {"type": "string", "format": "binary"}}


_PREFER_WAIT = re.compile(r"^\s*wait\s*=\s*([0-9]{1,9})\s*$", re.IGNORECASE)


def preferred_wait(prefer: str | None) -> int:
    """The ``wait`` preference of a ``Prefer`` header (RFC 7240, in seconds, at most
    MAX_WAIT; the ``max_wait`` setting may hold it shorter); 0 when absent. Preferences
    this server does not know are ignored, as the RFC asks."""
    for part in (prefer or "").split(","):
        m = _PREFER_WAIT.match(part.split(";", 1)[0])
        if m:
            return min(int(m.group(1)), int(MAX_WAIT))
    return 0


async def _current(
    request: Request, store: JobStore, job_id: str, wait: float, known: dict | None = None
) -> JobDocument:
    """The job's document, after waiting up to ``wait`` s for it to finish (``known``: its
    stored document as of now, if at hand); HttpError 404."""
    state = request.app.state.api
    ar = state.aredis.get()
    wait = min(wait, state.settings.max_wait)
    if wait > 0:
        doc = await state.finish_watch.wait(job_id, lambda: store.aget(ar, job_id), wait, known)
    else:
        doc = await store.aget(ar, job_id)
    if doc is None:
        raise unknown_job(job_id)
    position = None
    if doc["status"] == "queued":
        position = await store.aqueue_position(ar, job_id, doc["kind"])
    return present(doc, position)


@router.post(
    "/generate",
    status_code=202,
    response_model=JobDocument,
    responses={
        200: {
            "description": "finished within the `Prefer: wait=N` the request asked for: the "
            "job document, succeeded, failed or canceled",
            "headers": _LOCATION | _PREFERENCE_APPLIED,
            "links": JOB_LINKS,
        },
        202: {
            "description": "queued (or still running after `Prefer: wait=N`): the job document",
            "headers": _LOCATION | _PREFERENCE_APPLIED,
            "links": JOB_LINKS,
        },
        **errors(
            401,
            (404, "unknown checkpoint or version"),
            413,
            422,
            (429, "the queue is full, or this client has too many jobs in flight"),
            503,
        ),
    },
)
async def generate(
    request: Request,
    body: GenerateRequest,
    settings: SettingsDep,
    store: StoreDep,
    registry: RegistryDep,
    messages: MessagesDep,
    client: ClientDep,
    idempotency_key: str | None = Header(None, pattern=IDEM_RE),
    prefer: str | None = Header(
        None,
        description="`wait=N` (RFC 7240): answer when the job has finished, or after N "
        f"seconds (at most {MAX_WAIT:.0f}), in one request; other preferences are ignored",
        max_length=256,
    ),
    cancel_after: str | None = Header(
        None,
        description="a deadline (as deadline_seconds): seconds, or a duration like 90s, 5m, 1h30m",
        max_length=32,
    ),
    traceparent: str | None = TRACEPARENT,
) -> Response:
    """Queue a generation job: 202 with ``Location: /jobs/{id}`` and the job document. With
    ``Prefer: wait=N`` the answer waits for the job (200 once it has finished, 202 when N
    seconds passed first), so a small job costs one request."""

    def options(span: Any) -> dict[str, Any]:
        # After the checkpoint's checks: a request that fails both gets the same error.
        return {
            "client": client,
            "idem_key": idempotency_key,
            "body": body.model_dump(mode="json") if idempotency_key else None,
            "webhook": stored_webhook(body),
            "deadline_seconds": job_deadline(body.deadline_seconds, cancel_after),
            "trace": carrier(span),
        }

    def submit(span: Any) -> Submitted:
        normalised = normalise_generate(body, settings, registry)
        return submit_job("generate", normalised, settings, store, messages, **options(span))

    with request_span("POST /generate", request.headers) as span:
        if registry.resolves_locally:
            # On the event loop (the parsed config is cached), with the store's create
            # script through the async client: no thread-pool hop per submission.
            ar = request.app.state.api.aredis.get()
            normalised = normalise_generate(body, settings, registry)
            doc, created, stored = await asubmit_job(
                ar, "generate", normalised, settings, store, messages, **options(span)
            )
        else:
            # Resolving a checkpoint may read the object store: off the event loop.
            doc, created, stored = await run_in_threadpool(submit, span)
        if span is not None:
            span.set_attribute("ddpm.job_id", doc.id)
    headers = {"Location": f"/jobs/{doc.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    wait = min(preferred_wait(prefer), int(settings.max_wait))
    if not wait:
        return document_response(doc, 202, headers)
    headers["Preference-Applied"] = f"wait={wait}"
    if doc.status not in TERMINAL:
        doc = await _current(request, store, doc.id, wait, stored)
    return document_response(doc, 200 if doc.status in TERMINAL else 202, headers)


@router.get(
    "/jobs/{job_id}", response_model=JobDocument, responses=errors(401, _UNKNOWN_JOB, 422, 503)
)
async def get_job(
    request: Request,
    store: StoreDep,
    job_id: str = JobId,
    wait: float = Query(
        0.0,
        ge=0.0,
        le=MAX_WAIT,
        description="long poll: answer when the job has finished (succeeded, failed or "
        f"canceled) or after this many seconds, whichever comes first (at most {MAX_WAIT:.0f}; "
        "the server's DDPM_MAX_WAIT may hold it shorter)",
    ),
) -> Response:
    """The job document; 404 when unknown or expired. With ``wait``, a long poll."""
    return document_response(await _current(request, store, job_id, wait))


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=JobDocument,
    responses=errors(401, _UNKNOWN_JOB, (409, "the job has finished already"), 422, 503),
)
def cancel(store: StoreDep, job_id: str = JobId) -> JobDocument:
    """Cancel a queued or running job; 409 when it has already finished."""
    return cancel_job(store, job_id)


@router.get(
    "/jobs/{job_id}/events",
    status_code=200,
    response_class=EventStreamResponse,
    responses={
        200: {
            "description": "an event stream: `retry:` first, then frames `id:`, `event:` "
            "(status, progress, done) and `data:` (one JSON object), and `: keep-alive` "
            "comments while idle; it closes after `done` or after DDPM_STREAM_LIFETIME s",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **errors(
            (400, "Last-Event-ID is not an event id (see its pattern)"),
            401,
            _UNKNOWN_JOB,
            422,
            (429, "too many open event streams (in all, or of this client)"),
            503,
        ),
    },
)
async def events(
    request: Request,
    client: ClientDep,
    job_id: str = JobId,
    # Checked by the route (400, as SSE clients expect), not by FastAPI (422).
    last_event_id: str | None = Header(
        None,
        description="resume after this event id",
        json_schema_extra={"pattern": EVENT_ID_PATTERN},
    ),
    preview: bool = Query(False, description="also send live `preview` events while open"),
) -> EventStreamResponse:
    """Server-Sent Events: ``status``, ``progress`` and a final ``done``; resumable
    with ``Last-Event-ID``. The server ends a stream after ``DDPM_STREAM_LIFETIME``
    seconds (the client reconnects with ``Last-Event-ID``); open streams are capped
    (``DDPM_MAX_STREAMS``, ``DDPM_MAX_STREAMS_PER_CLIENT``: 429 beyond). With ``preview=1``
    also ``preview`` events (``step``, ``total``, ``url`` of a small PNG grid of the current
    x0 estimate), made only while someone watches."""
    return await job_event_stream(request, job_id, last_event_id, client, preview)


_RESULT_ERRORS = errors(
    401,
    (404, "unknown or expired job, a failed or canceled job, or no such result"),
    (409, "the job has not finished yet"),
    422,
    503,
)
_IMAGE_CONTENT = {f.media_type: _BINARY for f in IMAGE_FORMATS.values()}
_PRESIGNED = {
    307: {
        "description": "with result_store s3 and DDPM_RESULT_URL_SECONDS: a short-lived "
        "presigned URL of the file in the object store",
        "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
    }
}
# The extensions of IMAGE_FORMATS: png, webp, jpg.
Extension = Literal[tuple(f.extension for f in IMAGE_FORMATS.values())]  # type: ignore[valid-type]


async def result_response(
    ar: Any,
    store: JobStore,
    results_for: Callable[[str], ResultStore],
    settings: Settings,
    job_id: str,
    stem: str,
    ext: str,
) -> Response:
    """The result file ``stem.ext`` of a succeeded job: its bytes, or a redirect to the
    object store (``result_url_seconds``).

    On the event loop, with no thread-pool hop (a download follows every job): the fields
    come through the async Redis client, and a file on local disk is read inline (result
    files are small: an image, a grid); the other stores (Redis, the object store) are
    read in a thread, as a sync route would. ``ar``: the async Redis client. (Also the
    happy path of :mod:`app.api.fastpath`.)"""
    # The fields a download needs, not the whole document.
    doc = await store.aget_fields(ar, job_id, "result_store", "request", "result_attempt")
    if doc is None:
        raise unknown_job(job_id)
    if doc["status"] != "succeeded":
        raise HttpError(
            409 if doc["status"] not in ("failed", "canceled") else 404,
            f"job {job_id} is {doc['status']}: no results",
        )
    request_doc = doc.get("request") or {}
    if ext != "gif":
        written = IMAGE_FORMATS[request_doc.get("output_format") or "png"].extension
        if ext != written:
            raise HttpError(
                404, f"job {job_id} wrote its images as .{written}: ask for {stem}.{written}"
            )
        if stem == "grid" and request_doc.get("count") == 1:
            stem = "0"  # a one-image job stores no separate grid
    name = f"{stem}.{ext}"
    store_kind = doc.get("result_store") or "disk"
    results = results_for(store_kind)
    attempt = doc.get("result_attempt")
    if settings.result_url_seconds and isinstance(results, ObjectResults):
        url = await run_in_threadpool(
            results.presigned_url, job_id, name, attempt, settings.result_url_seconds
        )
        return Response(status_code=307, headers={"Location": url, "Cache-Control": "no-store"})
    if isinstance(results, DiskResults):
        data = results.get(job_id, name, attempt)
    else:
        data = await run_in_threadpool(results.get, job_id, name, attempt)
    if data is None:
        raise HttpError(404, f"{name} not found for job {job_id}")
    return Response(data, media_type=media_type(name), headers={"Cache-Control": "max-age=3600"})


@router.get(
    "/jobs/{job_id}/images/{index}.{ext}",
    response_class=Response,
    responses={
        200: {"description": "the image", "content": _IMAGE_CONTENT},
        **_PRESIGNED,
        **_RESULT_ERRORS,
    },
)
async def image(
    request: Request,
    store: StoreDep,
    results_for: ResultsDep,
    settings: SettingsDep,
    index: int = Path(..., ge=0, le=99999),
    ext: Extension = Path(..., description="the job's output format: png, webp or jpg"),
    job_id: str = JobId,
) -> Response:
    """Image ``index`` of a succeeded job, in the job's ``output_format`` (its URL in
    ``result.images`` has the extension)."""
    return await result_response(
        request.app.state.api.aredis.get(), store, results_for, settings, job_id, str(index), ext
    )


@router.get(
    "/jobs/{job_id}/grid.{ext}",
    response_class=Response,
    responses={
        200: {"description": "the grid", "content": _IMAGE_CONTENT},
        **_PRESIGNED,
        **_RESULT_ERRORS,
    },
)
async def grid(
    request: Request,
    store: StoreDep,
    results_for: ResultsDep,
    settings: SettingsDep,
    ext: Extension = Path(..., description="the job's output format: png, webp or jpg"),
    job_id: str = JobId,
) -> Response:
    """All images of a succeeded job tiled in one image, in the job's ``output_format``."""
    return await result_response(
        request.app.state.api.aredis.get(), store, results_for, settings, job_id, "grid", ext
    )


@router.get(
    "/jobs/{job_id}/trajectory.gif",
    response_class=Response,
    responses={
        200: {"description": "the animation", "content": {"image/gif": _BINARY}},
        **_PRESIGNED,
        **_RESULT_ERRORS,
    },
)
async def trajectory(
    request: Request,
    store: StoreDep,
    results_for: ResultsDep,
    settings: SettingsDep,
    job_id: str = JobId,
) -> Response:
    """The animated denoising (when ``trajectory_frames`` > 0)."""
    return await result_response(
        request.app.state.api.aredis.get(),
        store,
        results_for,
        settings,
        job_id,
        "trajectory",
        "gif",
    )
