"""The latest live preview grid of a job (see app/preview.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Response

from ..deps import get_results, get_store, require_api_key
from ..jobs import ApiError
from ..openapi import errors
from ..preview import PREVIEW_NAME
from ..store import JOB_ID_RE, JobStore

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["jobs"])


@router.get(
    "/jobs/{job_id}/preview.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the newest preview grid"},
        **errors(401, (404, "unknown job, or no preview yet"), 422, 503),
    },
)
def preview(
    job_id: str = Path(..., pattern=JOB_ID_RE, description="job id (a UUID)"),
    store: JobStore = Depends(get_store),
    results_for=Depends(get_results),
) -> Response:
    """The newest live preview of a job's current attempt: the x0 estimate of a generation
    (while a client watches ``/jobs/{id}/events?preview=1``) or the last sample grid of a
    training run. 404 when there is none."""
    doc = store.get(job_id)
    if doc is None:
        raise ApiError(404, f"job {job_id} not found (unknown or expired)")
    attempt = int(doc.get("attempts") or 0)
    data = None
    if attempt > 0:
        data = results_for(doc.get("result_store") or "disk").get(job_id, PREVIEW_NAME, attempt)
    if data is None:
        raise ApiError(404, f"no preview for job {job_id} yet")
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})
