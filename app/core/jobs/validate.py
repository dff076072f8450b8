"""Checks a job's options must pass before anything is stored or run, shared by the API
(at submission) and the worker (on what it reads back from Redis): the network's size
against the service's limits, and a training run's options as a whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.core.errors import InvalidInput
from app.core.jobs.spec import TrainOptions
from app.core.settings import Settings
from ddpm_core.config.size import ModelTooLarge, check_model_size
from ddpm_core.config.unet import UNetConfig, training_unet_config

__all__ = ["check_size", "check_checkpoint_size", "first_error", "validate_train_options"]

_LIMIT_SETTINGS = {
    "params": "DDPM_MAX_MODEL_PARAMS",
    "activation_bytes": "DDPM_MAX_ACTIVATION_BYTES",
}


def check_size(unet: UNetConfig, settings: Settings, what: str, field: str) -> None:
    """InvalidInput on ``field`` when the network ``unet`` is over the size settings."""
    try:
        check_model_size(unet, settings.max_model_params, settings.max_activation_bytes)
    except ModelTooLarge as exc:
        msg = f"{what} {exc.problem} ({_LIMIT_SETTINGS[exc.limit]})"
        raise InvalidInput(msg, field) from None


# Checkpoint configs already found within the size limits, by (id, limits); the value
# keeps the config alive, so its id is not reused. Sizing a network walks its whole
# layout (a third of a submission's time) and a version's config never changes.
_WITHIN_LIMITS: dict[tuple[int, int, int], Any] = {}


def check_checkpoint_size(spec: Any, ref: str, settings: Settings) -> None:
    """:func:`check_size` of a checkpoint's validated config ``spec``, cached per config."""
    key = (id(spec), settings.max_model_params, settings.max_activation_bytes)
    if _WITHIN_LIMITS.get(key) is spec:
        return
    check_size(spec.unet, settings, f"checkpoint {ref}", "checkpoint")
    if len(_WITHIN_LIMITS) >= 1024:
        _WITHIN_LIMITS.clear()
    _WITHIN_LIMITS[key] = spec


def first_error(exc: ValidationError, prefix: str) -> InvalidInput:
    """The first problem of a pydantic error, on its dotted field under ``prefix``."""
    e = exc.errors()[0]
    field = ".".join([prefix, *(str(p) for p in e.get("loc", ()))])
    return InvalidInput(e.get("msg", "invalid"), field)


def validate_train_options(
    options: dict[str, Any] | TrainOptions, settings: Settings
) -> TrainOptions:
    """Training options checked as ``POST /train`` checks them: the model (types, ranges,
    the network's config), the dataset folder under DATA_DIR/datasets, and the network's
    size against ``max_model_params``/``max_activation_bytes``. For the worker, too, to
    re-validate what it reads from Redis. InvalidInput naming ``options.<field>``."""
    if not isinstance(options, TrainOptions):
        try:
            options = TrainOptions.model_validate(options)
        except ValidationError as exc:
            raise first_error(exc, "options") from None
    dataset = options.dataset
    if dataset != "digits" and not (Path(settings.data_dir) / "datasets" / dataset).is_dir():
        raise InvalidInput(
            f"no dataset folder {dataset!r} under DATA_DIR/datasets", "options.dataset"
        )
    unet = training_unet_config(
        options.preset,
        options.image_size,
        options.channels,
        # Class count of the labels, for the size only: digits has 10, a folder <= its files.
        10 if options.class_cond else None,
        options.unet_overrides,
    )
    field = "options.unet_overrides" if options.unet_overrides else "options.image_size"
    check_size(unet, settings, "the requested network", field)
    return options
