"""What a request may ask for: the options of a generation job and of a training run.

The HTTP API validates requests with these models, the worker validates again what it
reads back from Redis, and the web page builds its forms from the OpenAPI document they
produce. Network configs are checked by the torch-free ``ddpm_core.unet_config``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ddpm_core.config.checks import ConfigError
from ddpm_core.config.unet import TRAINING_SET_FIELDS, UNET_FIELDS, training_unet_config

__all__ = ["GenerateRequest", "TrainOptions", "TrainRequest", "NAME_PATTERN", "MAX_TRAIN_STEPS"]


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
    its size against the settings by ``app.core.jobs.validate``."""

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
