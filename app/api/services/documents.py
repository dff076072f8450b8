"""A job as the API shows it: the public document of a stored job, and cancelling one."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.responses import Response

from app.api.schemas import JobDocument, JobWebhook
from app.core.errors import ConflictError, NotFoundError
from app.core.jobs.webhook import redact_url
from app.core.logs import log_event
from app.core.store import JobStore
from app.core.tracing import trace_id_of

__all__ = ["job_document", "present", "document_response", "cancel_job", "unknown_job"]

log = logging.getLogger("ddpm.api")


def unknown_job(job_id: str) -> NotFoundError:
    return NotFoundError(f"job {job_id} not found (unknown or expired)")


def job_document(store: JobStore, job_id: str) -> JobDocument:
    """The public document of a job; NotFoundError when unknown or expired."""
    doc = store.get(job_id)
    if doc is None:
        raise unknown_job(job_id)
    position = store.queue_position(job_id, doc["kind"]) if doc["status"] == "queued" else None
    return present(doc, position)


def present(doc: dict[str, Any], position: int | None) -> JobDocument:
    """The public document of stored job ``doc`` (``position``: its place in the queue)."""
    now = time.time()
    progress = doc.get("progress") or {}
    metrics = dict(doc.get("metrics") or {})
    created, started, finished = (
        doc.get("created_ts"),
        doc.get("started_ts"),
        doc.get("finished_ts"),
    )
    if started and created:
        metrics.setdefault("queue_seconds", round(started - created, 4))
    running = doc["status"] == "running"
    # A generation job's worker reports how long it waited for its engine (progress:
    # ``waiting`` until its first step, then ``wait_seconds``): that is not run time.
    wait = progress.get("wait_seconds")
    if running and started and progress.get("waiting"):
        wait = round(max(0.0, now - started), 4)
    if started and wait is not None:
        metrics.setdefault("wait_seconds", wait)
    if started:
        ran = (finished or now) - started - (metrics.get("wait_seconds") or 0.0)
        metrics.setdefault("run_seconds", round(max(0.0, ran), 4))
    eta = None
    if running and started and progress.get("fraction", 0) > 0:
        f = progress["fraction"]
        eta = round(metrics["run_seconds"] * (1 - f) / f, 3)
    return JobDocument(
        id=doc["id"],
        kind=doc["kind"],
        status=doc["status"],
        created_at=doc["created_at"],
        started_at=doc.get("started_at"),
        finished_at=doc.get("finished_at"),
        queue_position=position,
        progress=progress,
        eta_seconds=eta,
        request=doc.get("request") or {},
        result=doc.get("result"),
        error=doc.get("error"),
        metrics=metrics,
        attempts=int(doc.get("attempts") or 0),
        deadline_at=doc.get("deadline_at"),
        webhook=_webhook(doc),
        trace_id=trace_id_of(doc.get("trace")),
    )


def _webhook(doc: dict[str, Any]) -> JobWebhook | None:
    hook = doc.get("webhook")
    if not hook:
        return None
    return JobWebhook(
        url=redact_url(hook["url"]),
        events=hook["events"],
        deliveries=doc.get("webhooks") or {},
    )


def document_response(
    doc: JobDocument, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """``doc`` as a JSON response, serialised once (a route returning the model would have
    FastAPI validate it again against its response_model)."""
    return Response(doc.model_dump_json(), status, headers, media_type="application/json")


def cancel_job(store: JobStore, job_id: str) -> JobDocument:
    """Cancel: a queued job never starts, a running one stops at its next step; 409 if done."""
    doc = store.get(job_id)
    if doc is None:
        raise unknown_job(job_id)
    outcome, status = store.cancel(job_id, doc["kind"])
    if outcome == "gone":
        raise unknown_job(job_id)
    if outcome == "finished":
        raise ConflictError(f"job {job_id} has already {status}")
    log_event(log, "job canceled" if outcome == "canceled" else "cancel requested", job_id=job_id)
    return job_document(store, job_id)
