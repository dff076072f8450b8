"""Generation jobs: submit, poll, stream events, cancel, fetch results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from celery import Celery
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..deps import (
    client_id,
    get_celery,
    get_registry,
    get_results,
    get_settings_dep,
    get_store,
    require_api_key,
)
from ..jobs import ApiError, cancel_job, job_document, normalise_generate, submit_job
from ..preview import PreviewWatch
from ..registry import Registry
from ..schemas import GenerateRequest, JobDocument
from ..settings import Settings
from ..store import JOB_ID_RE, JobStore

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["jobs"])

JobId = Path(..., pattern=JOB_ID_RE, description="job id (a UUID)")
IDEM_RE = r"^[A-Za-z0-9._:-]{1,128}$"


@router.post("/generate", status_code=202, response_model=JobDocument)
def generate(
    body: GenerateRequest,
    response: Response,
    idempotency_key: str | None = Header(None, pattern=IDEM_RE),
    settings: Settings = Depends(get_settings_dep),
    store: JobStore = Depends(get_store),
    registry: Registry = Depends(get_registry),
    celery: Celery = Depends(get_celery),
    client: str = Depends(client_id),
) -> JobDocument:
    """Queue a generation job: 202 with ``Location: /jobs/{id}`` and the job document."""
    request = normalise_generate(body, settings, registry)
    job_id, created = submit_job(
        "generate",
        request,
        settings,
        store,
        celery,
        client=client,
        idem_key=idempotency_key,
        body=body.model_dump(mode="json"),
    )
    response.headers["Location"] = f"/jobs/{job_id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_document(store, job_id)


@router.get("/jobs/{job_id}", response_model=JobDocument)
def get_job(job_id: str = JobId, store: JobStore = Depends(get_store)) -> JobDocument:
    """The job document; 404 when unknown or expired."""
    return job_document(store, job_id)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobDocument)
def cancel(job_id: str = JobId, store: JobStore = Depends(get_store)) -> JobDocument:
    """Cancel a queued or running job; 409 when it has already finished."""
    return cancel_job(store, job_id)


def _sse(eid: str, event: str, data: dict) -> bytes:
    return f"id: {eid}\nevent: {event}\ndata: {json.dumps(data)}\n\n".encode()


@router.get("/jobs/{job_id}/events", response_class=StreamingResponse)
async def events(
    request: Request,
    job_id: str = JobId,
    last_event_id: str | None = Header(None, pattern=r"^[0-9]+-[0-9]+$"),
    preview: bool = Query(False, description="also send live `preview` events while open"),
    store: JobStore = Depends(get_store),
) -> StreamingResponse:
    """Server-Sent Events: ``status``, ``progress`` and a final ``done``; resumable
    with ``Last-Event-ID``. With ``preview=1`` also ``preview`` events (``step``, ``total``,
    ``url`` of a small PNG grid of the current x0 estimate), made only while watched."""
    if await run_in_threadpool(store.get, job_id) is None:
        raise ApiError(404, f"job {job_id} not found (unknown or expired)")
    watch = PreviewWatch(store, job_id) if preview else None

    async def stream() -> AsyncIterator[bytes]:
        last = last_event_id or "0-0"
        yield b"retry: 1000\n\n"
        while not await request.is_disconnected():
            if watch is not None:
                await watch.refresh()
            batch = await run_in_threadpool(store.read_events, job_id, last, 1000)
            if not batch:
                yield b": keep-alive\n\n"
                if await run_in_threadpool(store.get, job_id) is None:
                    return
                continue
            for eid, event, data in batch:
                last = eid
                yield _sse(eid, event, data)
                if event == "done":
                    return
            await asyncio.sleep(0)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _result(store: JobStore, results_for, job_id: str, name: str, media: str) -> Response:
    doc = store.get(job_id)
    if doc is None:
        raise ApiError(404, f"job {job_id} not found (unknown or expired)")
    if doc["status"] != "succeeded":
        raise ApiError(
            409 if doc["status"] not in ("failed", "canceled") else 404,
            f"job {job_id} is {doc['status']}: no results",
        )
    store_kind = doc.get("result_store") or "disk"
    if name == "grid.png" and (doc.get("request") or {}).get("count") == 1:
        name = "0.png"  # a one-image job stores no separate grid
    data = results_for(store_kind).get(job_id, name, doc.get("result_attempt"))
    if data is None:
        raise ApiError(404, f"{name} not found for job {job_id}")
    return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})


@router.get("/jobs/{job_id}/images/{index}.png", response_class=Response)
def image(
    index: int = Path(..., ge=0, le=99999),
    job_id: str = JobId,
    store: JobStore = Depends(get_store),
    results_for=Depends(get_results),
) -> Response:
    """Image ``index`` of a succeeded job, as PNG."""
    return _result(store, results_for, job_id, f"{index}.png", "image/png")


@router.get("/jobs/{job_id}/grid.png", response_class=Response)
def grid(
    job_id: str = JobId, store: JobStore = Depends(get_store), results_for=Depends(get_results)
) -> Response:
    """All images of a succeeded job tiled in one PNG."""
    return _result(store, results_for, job_id, "grid.png", "image/png")


@router.get("/jobs/{job_id}/trajectory.gif", response_class=Response)
def trajectory(
    job_id: str = JobId, store: JobStore = Depends(get_store), results_for=Depends(get_results)
) -> Response:
    """The animated denoising (when ``trajectory_frames`` > 0)."""
    return _result(store, results_for, job_id, "trajectory.gif", "image/gif")
