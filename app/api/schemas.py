"""Response models of the HTTP API (the request models are the job specs of
:mod:`app.core.jobs.spec`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.jobs.names import JobStatus

__all__ = [
    "Progress",
    "ImageRef",
    "JobResult",
    "JobError",
    "JobMetrics",
    "JobDocument",
    "CheckpointVersion",
    "CheckpointInfo",
    "ErrorBody",
    "FieldError",
    "ValidationErrorBody",
    "ErrorMessage",
    "WorkerStatus",
    "Readiness",
]


class Progress(BaseModel):
    step: int = 0
    total: int = 0
    fraction: float = 0.0
    waiting: bool = Field(
        False,
        description="a running generation job that its worker holds but has not started "
        "computing yet: every network call is taken by other jobs' images (or its model "
        "loads); `metrics.wait_seconds` counts this time",
    )


class ImageRef(BaseModel):
    index: int
    seed: int
    url: str


class JobResult(BaseModel):
    images: list[ImageRef] | None = None
    grid_url: str | None = None
    trajectory_url: str | None = None
    format: str | None = Field(None, description="the images' and the grid's format: png, ...")
    checkpoint: str | None = None
    final_loss: float | None = None
    loss_curve: list[list[float]] | None = Field(
        None,
        description="a training run's [step, smoothed loss, lr] points, at most 257, "
        "spread over the whole run (also in the checkpoint's meta.json)",
    )


class JobError(BaseModel):
    type: str
    message: str
    reason: str | None = Field(None, description="why it was canceled: deadline")


class JobMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    queue_seconds: float | None = Field(None, description="from submit to a worker's claim")
    wait_seconds: float | None = Field(
        None,
        description="generation: from the claim to the first denoising step (waiting for "
        "engine capacity or the model's load); so far, while `progress.waiting`",
    )
    run_seconds: float | None = Field(
        None, description="from the claim (generation: the first step) to the outcome; so far"
    )


class WebhookDelivery(BaseModel):
    """The latest delivery of one event of a job's webhook."""

    id: str = Field(description="its webhook-id header: the same on every attempt")
    state: Literal["pending", "delivered", "failed"]
    attempts: int = Field(0, description="attempts made so far")
    last_status: int | None = Field(None, description="HTTP status of the last attempt")
    last_error: str | None = Field(None, description="why the last attempt did not deliver")
    next_attempt_seconds: float | None = Field(
        None, description="when pending after a failed attempt: seconds it waits before the next"
    )


class JobWebhook(BaseModel):
    """A job's webhook: where it goes (without query or path), and each event's delivery."""

    url: str = Field(description="the receiver's scheme, host and port (the rest redacted)")
    events: list[Literal["start", "progress", "completed"]]
    deliveries: dict[str, WebhookDelivery] = Field(
        default_factory=dict, description="by event: start, progress (the latest), completed"
    )


class JobDocument(BaseModel):
    """The state of one job, as ``GET /jobs/{id}`` returns it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "0b7c6f0e-6a51-4c55-9d1b-3f2a3c1e8d11",
                    "kind": "generate",
                    "status": "succeeded",
                    "created_at": "2026-01-01T12:00:00+00:00",
                    "progress": {"step": 50, "total": 50, "fraction": 1.0},
                    "request": {"count": 1, "seed": 42, "checkpoint": "digits@1"},
                    "result": {
                        "images": [{"index": 0, "seed": 42, "url": "/jobs/0b7c.../images/0.png"}],
                        "grid_url": "/jobs/0b7c.../grid.png",
                    },
                }
            ]
        }
    )

    id: str
    kind: Literal["generate", "train"]
    status: JobStatus
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    queue_position: int | None = None
    progress: Progress = Field(default_factory=Progress)
    eta_seconds: float | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    result: JobResult | None = None
    error: JobError | None = None
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    attempts: int = 0
    deadline_at: str | None = Field(
        None, description="when a job not yet started by then is canceled (Cancel-After)"
    )
    webhook: JobWebhook | None = None
    trace_id: str | None = Field(
        None, description="the job's OpenTelemetry trace (when tracing is on): 32 hex digits"
    )


class CheckpointVersion(BaseModel):
    version: str
    builtin: bool = False
    config: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)


class CheckpointInfo(BaseModel):
    name: str
    latest: str
    versions: list[CheckpointVersion]


class ErrorBody(BaseModel):
    detail: Any


# -- error and health bodies (what the API sends; the OpenAPI document declares them) ------
class FieldError(BaseModel):
    field: str = Field(
        ...,
        description="the offending field: dotted for the body (options.lr), or the "
        "header/path/query name (header.last-event-id); `body` for the body as a whole",
    )
    reason: str = Field(..., description="why it was refused")


class ValidationErrorBody(BaseModel):
    """422: the request is well-formed HTTP but a field is invalid; every problem listed."""

    detail: list[FieldError]


class ErrorMessage(BaseModel):
    """Every error status but 422: one human-readable message."""

    detail: str


class WorkerStatus(BaseModel):
    name: str
    device: str | None = None
    age_s: float


class Readiness(BaseModel):
    """``GET /readyz``: ``ok`` with the live workers, or ``unavailable`` with the reason."""

    status: Literal["ok", "unavailable"]
    workers: list[WorkerStatus] | None = None
    reason: str | None = None
