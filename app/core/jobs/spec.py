"""What a request may ask for: the options of a generation job and of a training run.

The HTTP API validates requests with these models, the worker validates again what it
reads back from Redis, and the web page builds its forms from the OpenAPI document they
produce. The training options are declared once, in the torch-free
``ddpm_core.config.train``; network configs are checked by ``ddpm_core.config.unet``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ddpm_core.config.checks import ConfigError
from ddpm_core.config.names import NAME_PATTERN
from ddpm_core.config.options import Declared, declared_options
from ddpm_core.config.train import MAX_TRAIN_STEPS, TrainConfig
from ddpm_core.config.unet import training_unet_config

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


def _config_error(title: str, exc: ConfigError, value: Any) -> ValidationError:
    """A pydantic error located at the field ConfigError names (dotted -> loc)."""
    loc = tuple(exc.field.split("."))
    error = PydanticCustomError("invalid_config", "{reason}", {"reason": exc.problem})
    return ValidationError.from_exception_data(
        title, [InitErrorDetails(type=error, loc=loc, input=value)]
    )


def _annotation(d: Declared) -> Any:
    """The request's type of a declared TrainConfig field: its choices as a Literal, a
    tuple's numbers each strict and bounded (the container itself is lax: see below)."""
    opt = d.option
    if d.type is tuple:
        item = Annotated[float, Strict(), Field(**opt.api_limits.kwargs())]
        return tuple[(item,) * d.length]  # type: ignore[misc]
    base: Any = {dict: dict[str, Any]}.get(d.type, d.type)
    if opt.choices is not None:
        base = Literal[opt.choices]  # type: ignore[valid-type]
    return base | None if d.nullable else base


def _request_field(d: Declared) -> tuple[Any, Any]:
    """(annotation, pydantic Field) of a declared TrainConfig field, as a request sees it."""
    opt = d.option
    kw: dict[str, Any] = {"description": opt.description}
    if d.default_factory is not dataclasses.MISSING:
        kw["default_factory"] = d.default_factory
    else:
        kw["default"] = d.default
    if d.type is tuple:
        kw["strict"] = False  # a JSON array is a list: the container is lax, its numbers strict
    else:
        kw |= opt.api_limits.kwargs()
    if opt.schema is not None:
        kw["json_schema_extra"] = opt.schema
    return _annotation(d), Field(**kw)


class _TrainOptionsChecks(BaseModel):
    """What the fields of TrainOptions cannot check one by one."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> Any:
        o: Any = self
        if o.default_steps > o.timesteps:
            exc = ConfigError("default_steps", f"must be at most timesteps ({o.timesteps})")
            raise _config_error("TrainOptions", exc, o.default_steps)
        try:
            unet = training_unet_config(o.preset, o.image_size, o.channels, None, o.unet_overrides)
        except ConfigError as exc:
            raise _config_error("TrainOptions", exc, o.unet_overrides) from None
        if o.unet_overrides:  # the checked values, JSON-ready (lists, floats)
            checked = unet.to_dict()
            o.unet_overrides = {k: checked[k] for k in o.unet_overrides}
        return self


TrainOptions = create_model(
    "TrainOptions",
    __doc__="""Options of a training run: the fields of ``ddpm_core.train.TrainConfig`` that a
request may set (the output directory, resumption and device belong to the worker),
built from their declarations in ``ddpm_core.config.train`` with the request's bounds.
The network they describe is validated by the torch-free ``ddpm_core.config.unet``;
its size against the settings by ``app.core.jobs.validate``.""",
    __base__=_TrainOptionsChecks,
    __module__=__name__,
    **{d.name: _request_field(d) for d in declared_options(TrainConfig) if d.option.request},
)


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
