"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ddpm_core.unet_config import (
    TRAINING_SET_FIELDS,
    UNET_FIELDS,
    ConfigError,
    training_unet_config,
)

__all__ = [
    "GenerateRequest",
    "TrainRequest",
    "TrainOptions",
    "Progress",
    "ImageRef",
    "JobResult",
    "JobError",
    "JobMetrics",
    "JobDocument",
    "CheckpointVersion",
    "CheckpointInfo",
    "ErrorBody",
    "JOB_STATUSES",
    "TERMINAL",
]

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class GenerateRequest(BaseModel):
    """A generation request; unset fields take the checkpoint's defaults."""

    # strict: JSON booleans or strings are not numbers here (a JSON int is still a float)
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"count": 4, "seed": 42, "steps": 50, "sampler": "ddim"},
                {"count": 8, "checkpoint": "digits", "label": 3, "guidance_scale": 2.0},
            ]
        },
    )

    count: int = Field(1, ge=1, description="number of images (1..DDPM_MAX_COUNT)")
    seed: int | None = Field(
        None, ge=0, le=2**62, description="image i uses seed+i; null = random (echoed back)"
    )
    steps: int | None = Field(None, ge=1, description="sampling steps (1..T)")
    sampler: Literal["ddpm", "ddim", "dpm++2m", "dpm++3m", "dpm++2m-sde"] | None = Field(
        None,
        description="ddpm, ddim, or the DPM-Solver++ multistep samplers dpm++2m, dpm++3m "
        "and dpm++2m-sde (stochastic)",
    )
    eta: float | None = Field(None, ge=0.0, le=1.0, description="DDIM stochasticity (ddim only)")
    checkpoint: str | None = Field(None, description="name or name@version", max_length=140)
    label: int | None = Field(None, ge=0, description="class (class-conditional checkpoints)")
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    use_ema: bool = True
    trajectory_frames: int = Field(0, ge=0, description="0 = no GIF of the denoising")


NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_TRAIN_STEPS = 10_000_000
Beta = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]

# What unet_overrides may set: every UNetConfig field but those the run's own options set.
_OVERRIDES_SCHEMA = {
    "type": "object",
    "properties": {k: r.schema for k, r in UNET_FIELDS.items() if k not in TRAINING_SET_FIELDS},
    "additionalProperties": False,
}


def _config_error(title: str, exc: ConfigError, value: Any) -> ValidationError:
    """A pydantic error located at the field ConfigError names (dotted -> loc)."""
    loc = tuple(exc.field.split("."))
    error = PydanticCustomError("invalid_config", "{reason}", {"reason": exc.problem})
    return ValidationError.from_exception_data(
        title, [InitErrorDetails(type=error, loc=loc, input=value)]
    )


class TrainOptions(BaseModel):
    """Options of a training run: the fields of ``ddpm_core.train.TrainConfig`` that a
    request may set (the output directory, resumption and device belong to the worker).
    A test keeps the two in step; this copy exists because the API does not import torch.
    The network they describe is validated by the torch-free ``ddpm_core.unet_config``;
    its size against the settings by ``app.jobs.validate_train_options``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    dataset: str = Field(
        "digits",
        pattern=NAME_PATTERN,
        description='"digits" (built in) or the name of an image folder under DATA_DIR/datasets',
    )
    preset: Literal["tiny", "small", "ddpm-cifar10"] = "tiny"
    image_size: int = Field(16, ge=8, le=512)
    channels: Literal[1, 3] = 1
    unet_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="UNetConfig fields that replace the preset's (ddpm_core.unet_config)",
        json_schema_extra=_OVERRIDES_SCHEMA,
    )
    class_cond: bool = False
    p_uncond: float = Field(0.1, ge=0.0, lt=1.0)
    random_flip: bool = False
    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: int = Field(1000, ge=2, le=10000)
    loss: Literal["mse", "l1"] = "mse"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field(
        "epsilon", description="what the network learns to predict: the noise, v, or x0"
    )
    steps: int = Field(1000, ge=1, le=MAX_TRAIN_STEPS)
    batch_size: int = Field(64, ge=1, le=65536)
    accumulate: int = Field(1, ge=1, le=1024)
    lr: float = Field(2e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    # a JSON array is a list: the container is lax, its numbers strict (Beta)
    adam_betas: tuple[Beta, Beta] = Field((0.9, 0.999), strict=False)
    warmup: int = Field(100, ge=0, le=MAX_TRAIN_STEPS)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float | None = Field(1.0, gt=0.0, le=1e6)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup: bool = True
    precision: Literal["no", "bf16", "fp16"] = "no"
    save_every: int = Field(0, ge=0, le=MAX_TRAIN_STEPS)
    sample_every: int = Field(0, ge=0, le=MAX_TRAIN_STEPS)
    sample_count: int = Field(16, ge=1, le=256)
    default_steps: int = Field(50, ge=1, le=10000, description="1..timesteps")
    default_sampler: Literal["ddpm", "ddim", "dpm++2m", "dpm++3m", "dpm++2m-sde"] = "ddim"
    default_eta: float = Field(0.0, ge=0.0, le=1.0)
    guidance_scale: float = Field(1.0, ge=0.0, le=100.0)
    compile: bool = False
    channels_last: bool = False
    seed: int = Field(0, ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _consistent(self) -> TrainOptions:
        if self.default_steps > self.timesteps:
            exc = ConfigError("default_steps", f"must be at most timesteps ({self.timesteps})")
            raise _config_error("TrainOptions", exc, self.default_steps)
        try:
            unet = training_unet_config(
                self.preset, self.image_size, self.channels, None, self.unet_overrides
            )
        except ConfigError as exc:
            raise _config_error("TrainOptions", exc, self.unet_overrides) from None
        if self.unet_overrides:  # the checked values, JSON-ready (lists, floats)
            checked = unet.to_dict()
            self.unet_overrides = {k: checked[k] for k in self.unet_overrides}
        return self


class TrainRequest(BaseModel):
    """A training run that publishes a new version of checkpoint ``name``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={"examples": [{"name": "digits", "options": {"steps": 2000}}]},
    )

    name: str = Field(..., pattern=NAME_PATTERN)
    resume_from: str | None = Field(None, description="checkpoint name@version to fine-tune")
    options: TrainOptions = Field(
        default_factory=TrainOptions, description="training options (ddpm_core.train)"
    )


class Progress(BaseModel):
    step: int = 0
    total: int = 0
    fraction: float = 0.0


class ImageRef(BaseModel):
    index: int
    seed: int
    url: str


class JobResult(BaseModel):
    images: list[ImageRef] | None = None
    grid_url: str | None = None
    trajectory_url: str | None = None
    checkpoint: str | None = None
    final_loss: float | None = None


class JobError(BaseModel):
    type: str
    message: str


class JobMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    queue_seconds: float | None = None
    run_seconds: float | None = None


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
