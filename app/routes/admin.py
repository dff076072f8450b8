"""Admin: start a training run."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Response

from ..deps import get_registry, get_settings_dep, get_store, get_task_messages, require_admin
from ..jobs import normalise_train, submit_job
from ..openapi import JOB_LINKS, errors
from ..queue import TaskMessages
from ..registry import Registry
from ..schemas import JobDocument, TrainRequest
from ..settings import Settings
from ..store import JobStore

router = APIRouter(dependencies=[Depends(require_admin)], tags=["admin"])


@router.post(
    "/train",
    status_code=202,
    response_model=JobDocument,
    responses={
        202: {
            "description": "queued: the job document (kind train)",
            "headers": {
                "Location": {"description": "/jobs/{id}", "schema": {"type": "string"}},
            },
            "links": JOB_LINKS,
        },
        **errors(
            401,
            403,
            (404, "resume_from names an unknown checkpoint or version"),
            413,
            422,
            (429, "too many jobs in flight for this client"),
            503,
        ),
    },
)
def train(
    body: TrainRequest,
    response: Response,
    idempotency_key: str | None = Header(None, pattern=r"^[A-Za-z0-9._:-]{1,128}$"),
    settings: Settings = Depends(get_settings_dep),
    store: JobStore = Depends(get_store),
    registry: Registry = Depends(get_registry),
    messages: TaskMessages = Depends(get_task_messages),
) -> JobDocument:
    """Queue a training job (kind ``train``) that publishes a new checkpoint version."""
    request = normalise_train(body, settings, registry)
    doc, created, _ = submit_job(
        "train",
        request,
        settings,
        store,
        messages,
        client="admin",
        idem_key=idempotency_key,
        body=body.model_dump(mode="json"),
    )
    response.headers["Location"] = f"/jobs/{doc.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return doc
