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

from app.core.jobs.deadline import DeadlineFields
from app.core.jobs.options import (
    NOT_IN_ENGINE,
    Flag,
    GenerateOption,
    Stored,
    request_model,
    stored_model,
)
from app.core.jobs.webhook import WebhookFields
from ddpm_core.config.checks import ConfigError
from ddpm_core.config.formats import DEFAULT_QUALITY, OUTPUT_FORMATS
from ddpm_core.config.names import NAME_PATTERN, SAMPLERS
from ddpm_core.config.options import Declared, declared_options
from ddpm_core.config.train import MAX_TRAIN_STEPS, TrainConfig
from ddpm_core.config.unet import training_unet_config

__all__ = [
    "GENERATE_OPTIONS",
    "GenerateRequest",
    "GenerateJob",
    "TrainOptions",
    "TrainRequest",
    "NAME_PATTERN",
    "MAX_TRAIN_STEPS",
]


Sampler = Literal[SAMPLERS]  # type: ignore[valid-type]
OutputFormat = Literal[OUTPUT_FORMATS]  # type: ignore[valid-type]

# Every option of a generation job, declared once: the request schema (GenerateRequest),
# the stored form the worker checks again (GenerateJob), the engine's GenSpec, the
# ``ddpm sample`` and ``ddpm remote generate`` flags derive from it; the clients' and the
# web page's forms are checked against it (tests/architecture/test_options.py).
GENERATE_OPTIONS: tuple[GenerateOption, ...] = (
    GenerateOption(
        "count", int, 1, "number of images (1..DDPM_MAX_COUNT)", {"ge": 1},
        stored=Stored(int, bounds={"ge": 1, "le": 4096}),
        engine_default=1,
        flag=Flag(("-n", "--count"), int, default=16),
    ),
    GenerateOption(
        "seed", int | None, None, "image i uses seed+i; null = random (echoed back)",
        {"ge": 0, "le": 2**62},
        stored=Stored(int, bounds={"ge": 0, "le": 2**62 + 4096}),
        engine_default=0,
        flag=Flag(("--seed",), int, "image i uses seed+i", default=0),
    ),
    GenerateOption(
        "steps", int | None, None, "sampling steps (1..T)", {"ge": 1},
        stored=Stored(int, bounds={"ge": 1, "le": 100_000}),
        flag=Flag(("--steps",), int, "sampling steps (default: checkpoint)"),
    ),
    GenerateOption(
        "sampler", Sampler | None, None,
        "ddpm, ddim, or the DPM-Solver++ multistep samplers dpm++2m, dpm++3m "
        "and dpm++2m-sde (stochastic)",
        stored=Stored(Sampler),
        flag=Flag(("--sampler",), str, choices=SAMPLERS),
    ),
    GenerateOption(
        "eta", float | None, None, "DDIM stochasticity (ddim only)", {"ge": 0.0, "le": 1.0},
        stored=Stored(float, 0.0, {"ge": 0.0, "le": 1.0, "allow_inf_nan": False}),
        flag=Flag(("--eta",), float, "DDIM eta in [0, 1]"),
    ),
    GenerateOption(
        "checkpoint", str | None, None, "name or name@version", {"max_length": 140},
        stored=Stored(str, bounds={"max_length": 140}),
        engine_default=NOT_IN_ENGINE,  # the engine gets the version's directory
    ),
    GenerateOption(
        "label", int | None, None, "class (class-conditional checkpoints)", {"ge": 0},
        stored=Stored(int | None, None, {"ge": 0}),
        flag=Flag(("--label",), int, "class label (conditional models)"),
    ),
    GenerateOption(
        "guidance_scale", float | None, None, None, {"ge": 0.0, "le": 50.0},
        # A checkpoint's own default may be up to MAX_GUIDANCE_SCALE.
        stored=Stored(float | None, None, {"ge": 0.0, "le": 100.0, "allow_inf_nan": False}),
        flag=Flag(("--guidance",), float, "classifier-free guidance scale"),
    ),
    GenerateOption(
        "use_ema", bool, True,
        stored=Stored(bool, True),
        engine_default=True,
        flag=Flag(("--raw",), help="use the raw weights instead of the EMA", invert=True),
    ),
    GenerateOption(
        "trajectory_frames", int, 0, "0 = no GIF of the denoising", {"ge": 0},
        stored=Stored(int, 0, {"ge": 0, "le": 1000}),
        engine_default=0,
        flag=Flag(
            ("--trajectory-frames",), int, "also write trajectory.gif (N frames)",
            default=0, remote_only=True,
        ),
    ),
    GenerateOption(
        "output_format", OutputFormat, "png",
        "png (lossless), webp or jpeg (lossy: smaller, `output_quality`); the images and "
        "the grid are written in it",
        stored=Stored(OutputFormat, "png"),
        engine_default=NOT_IN_ENGINE,  # the worker encodes the engine's pixels
        flag=Flag(("--format",), str, "image file format", default="png", choices=OUTPUT_FORMATS),
    ),
    GenerateOption(
        "output_quality", int, DEFAULT_QUALITY, "quality of webp and jpeg (1..100)",
        {"ge": 1, "le": 100},
        stored=Stored(int, DEFAULT_QUALITY, {"ge": 1, "le": 100}),
        engine_default=NOT_IN_ENGINE,
        flag=Flag(("--quality",), int, "webp/jpeg quality, 1..100", default=DEFAULT_QUALITY),
    ),
)  # fmt: skip

_GenerateOptionsRequest = request_model(
    "GenerateOptionsRequest",
    "The generation options of a request.",
    GENERATE_OPTIONS,
    # strict: JSON booleans or strings are not numbers here (a JSON int is still a float)
    ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"count": 4, "seed": 42, "steps": 50, "sampler": "ddim"},
                {"count": 8, "checkpoint": "digits", "label": 3, "guidance_scale": 2.0},
            ]
        },
    ),
)


class GenerateRequest(WebhookFields, DeadlineFields, _GenerateOptionsRequest):  # type: ignore[misc,valid-type]
    """A generation request; unset fields take the checkpoint's defaults."""


GenerateJob = stored_model(
    "GenerateJob",
    "A normalised generation request as the API stored it; checked again by the worker, "
    "which trusts nothing it reads from Redis.",
    GENERATE_OPTIONS,
)


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


class TrainRequest(WebhookFields, DeadlineFields):
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
