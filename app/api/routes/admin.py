"""Admin: check the admin token, start a training run."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Response

from app.api.deps import MessagesDep, RegistryDep, SettingsDep, StoreDep, require_admin
from app.api.openapi import JOB_LINKS, errors
from app.api.params import IDEM_RE, TRACEPARENT
from app.api.schemas import JobDocument
from app.api.services.submit import normalise_train, submit_job
from app.core.jobs.deadline import job_deadline
from app.core.jobs.spec import TrainRequest
from app.core.jobs.webhook import stored_webhook
from app.core.tracing import carrier, request_span

router = APIRouter(dependencies=[Depends(require_admin)], tags=["admin"])


@router.get(
    "/admin/token",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "the admin token is valid"}, **errors(401, 403)},
)
def check_token() -> Response:
    """Whether the ``Authorization: Bearer`` token is the admin token (the web page checks
    a token when it is entered); changes nothing."""
    return Response(status_code=204)


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
    settings: SettingsDep,
    store: StoreDep,
    registry: RegistryDep,
    messages: MessagesDep,
    idempotency_key: str | None = Header(None, pattern=IDEM_RE),
    cancel_after: str | None = Header(
        None,
        description="a deadline (as deadline_seconds): seconds, or a duration like 90s, 5m, 1h30m",
        max_length=32,
    ),
    traceparent: str | None = TRACEPARENT,
) -> JobDocument:
    """Queue a training job (kind ``train``) that publishes a new checkpoint version."""
    request = normalise_train(body, settings, registry)
    with request_span("POST /train", {"traceparent": traceparent or ""}) as span:
        doc, created, _ = submit_job(
            "train",
            request,
            settings,
            store,
            messages,
            client="admin",
            idem_key=idempotency_key,
            body=body.model_dump(mode="json"),
            webhook=stored_webhook(body),
            deadline_seconds=job_deadline(body.deadline_seconds, cancel_after),
            trace=carrier(span),
        )
    response.headers["Location"] = f"/jobs/{doc.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return doc
