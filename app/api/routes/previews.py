"""The latest live preview grid of a job (see :mod:`app.core.jobs.previews`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.api.deps import ResultsDep, StoreDep, require_api_key
from app.api.errors import HttpError
from app.api.openapi import errors
from app.api.params import JobId
from app.api.services.documents import unknown_job
from app.core.jobs.previews import PREVIEW_NAME

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["jobs"])


@router.get(
    "/jobs/{job_id}/preview.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the newest preview grid"},
        **errors(401, (404, "unknown job, or no preview yet"), 422, 503),
    },
)
def preview(store: StoreDep, results_for: ResultsDep, job_id: str = JobId) -> Response:
    """The newest live preview of a job's current attempt: the x0 estimate of a generation
    (while a client watches ``/jobs/{id}/events?preview=1``) or the last sample grid of a
    training run. 404 when there is none."""
    doc = store.get(job_id)
    if doc is None:
        raise unknown_job(job_id)
    attempt = int(doc.get("attempts") or 0)
    data = None
    if attempt > 0:
        data = results_for(doc.get("result_store") or "disk").get(job_id, PREVIEW_NAME, attempt)
    if data is None:
        raise HttpError(404, f"no preview for job {job_id} yet")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})
