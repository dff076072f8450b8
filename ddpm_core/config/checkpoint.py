"""A checkpoint's ``config.json`` and ``meta.json``: parsed and validated without torch.

The API validates checkpoints with this module (it never imports torch);
:mod:`ddpm_core.checkpoint` re-exports what it needs and adds the weights.
Every field is type- and range-checked; a problem is a :class:`CheckpointError`
naming the file and the field, e.g. ``config.json: default_steps must be an
integer, got 'abc'``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm_core.config.checks import (
    ConfigError,
    check_bool,
    check_choice,
    check_float,
    check_int,
)
from ddpm_core.config.names import PREDICTION_TYPES, SAMPLERS, VARIANCE_TYPES
from ddpm_core.config.schedule import parse_schedule
from ddpm_core.config.size import (
    DEFAULT_MAX_ACTIVATION_BYTES,
    DEFAULT_MAX_PARAMS,
    check_model_size,
)
from ddpm_core.config.unet import UNetConfig

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "META_FILE",
    "MAX_GUIDANCE_SCALE",
    "CheckpointError",
    "CheckpointConfig",
    "read_json",
    "read_config",
    "read_meta",
    "check_config_size",
]

FORMAT_VERSION = 1
CONFIG_FILE, META_FILE = "config.json", "meta.json"
MAX_GUIDANCE_SCALE = 100.0


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable or does not match its config."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    @property
    def public_message(self) -> str:
        """The message with the file's name only (no server path), e.g. for API clients."""
        return f"{Path(self.path).name}: {self.problem}"


@dataclass(frozen=True)
class CheckpointConfig:
    """What a checkpoint's config.json holds besides the weights."""

    unet: UNetConfig
    schedule: dict = field(default_factory=lambda: {"kind": "linear", "num_train_timesteps": 1000})
    variance_type: str = "fixed_small"
    prediction_type: str = "epsilon"
    default_steps: int = 100
    default_sampler: str = "ddim"
    default_eta: float = 0.0
    default_guidance_scale: float = 1.0
    clip_denoised: bool = True
    class_names: list[str] | None = None

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def channels(self) -> int:
        return self.unet.in_channels

    @property
    def num_classes(self) -> int | None:
        return self.unet.num_classes

    @property
    def num_train_timesteps(self) -> int:
        return int(self.schedule.get("num_train_timesteps", 1000))

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "image_size": self.image_size,
            "channels": self.channels,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "unet": self.unet.to_dict(),
            "schedule": dict(self.schedule),
            "variance_type": self.variance_type,
            "prediction_type": self.prediction_type,
            "clip_denoised": self.clip_denoised,
            "default_steps": self.default_steps,
            "default_sampler": self.default_sampler,
            "default_eta": self.default_eta,
            "default_guidance_scale": self.default_guidance_scale,
        }

    @classmethod
    def from_dict(cls, d: Any) -> CheckpointConfig:
        """Parse and validate; ConfigError (a ValueError) names the offending field."""
        if not isinstance(d, dict):
            raise ConfigError("config", f"must be a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise ConfigError(
                "format_version", f"{version!r} is not supported (expected {FORMAT_VERSION})"
            )
        if "unet" not in d:
            raise ConfigError("unet", "section is missing")
        try:
            unet = UNetConfig.from_dict(d["unet"])
        except ConfigError as exc:
            raise (exc if exc.field == "unet" else exc.within("unet")) from None
        schedule = parse_schedule(d.get("schedule"))
        T = schedule["num_train_timesteps"]
        class_names = d.get("class_names")
        if class_names is not None:
            if not isinstance(class_names, list) or not all(
                isinstance(n, str) and len(n) <= 256 for n in class_names
            ):
                raise ConfigError("class_names", "must be a list of strings or null")
            if len(class_names) != (unet.num_classes or 0):
                raise ConfigError(
                    "class_names",
                    f"must have one name per class ({unet.num_classes or 0}), "
                    f"got {len(class_names)}",
                )
        cfg = cls(
            unet=unet,
            schedule=schedule,
            variance_type=check_choice(
                "variance_type", d.get("variance_type", "fixed_small"), VARIANCE_TYPES
            ),
            prediction_type=check_choice(
                "prediction_type", d.get("prediction_type", "epsilon"), PREDICTION_TYPES
            ),
            default_steps=check_int("default_steps", d.get("default_steps", 100), 1, T),
            default_sampler=check_choice(
                "default_sampler", d.get("default_sampler", "ddim"), SAMPLERS
            ),
            default_eta=check_float("default_eta", d.get("default_eta", 0.0), 0.0, 1.0),
            default_guidance_scale=check_float(
                "default_guidance_scale",
                d.get("default_guidance_scale", 1.0),
                0.0,
                MAX_GUIDANCE_SCALE,
            ),
            clip_denoised=check_bool("clip_denoised", d.get("clip_denoised", True)),
            class_names=class_names,
        )
        cfg._check_summary(d)
        return cfg

    def _check_summary(self, d: dict) -> None:
        """The top-level copies of unet fields (image_size, channels, num_classes) must
        agree with the unet section; the sampler needs eps of the input's shape."""
        for key, value in (
            ("image_size", self.image_size),
            ("channels", self.channels),
            ("num_classes", self.num_classes),
        ):
            if key in d and (d[key] != value or type(d[key]) is not type(value)):
                raise ConfigError(
                    key, f"must equal the unet section's value {value!r}, got {d[key]!r}"
                )
        if self.unet.out_channels != self.unet.in_channels:
            raise ConfigError(
                "unet.out_channels",
                f"must equal in_channels ({self.unet.in_channels}): the network predicts one "
                "image-shaped tensor (learned variances are not supported), "
                f"got {self.unet.out_channels}",
            )


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; CheckpointError when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(path, "file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def read_config(path: str | os.PathLike) -> CheckpointConfig:
    """Read and validate ``config.json`` of the checkpoint directory ``path``."""
    file = Path(path) / CONFIG_FILE
    try:
        return CheckpointConfig.from_dict(read_json(file))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(file, str(exc)) from None


def read_meta(path: str | os.PathLike) -> dict:
    """``meta.json`` of the checkpoint directory, or {} when it has none."""
    file = Path(path) / META_FILE
    return read_json(file) if file.exists() else {}


def check_config_size(
    path: str | os.PathLike,
    config: CheckpointConfig,
    max_params: int | None = DEFAULT_MAX_PARAMS,
    max_activation_bytes: int | None = DEFAULT_MAX_ACTIVATION_BYTES,
) -> tuple[int, int]:
    """(parameters, activation bytes per image) of the checkpoint's network; CheckpointError
    naming its config.json when over a limit. Allocates nothing."""
    try:
        return check_model_size(config.unet, max_params, max_activation_bytes)
    except ConfigError as exc:
        raise CheckpointError(Path(path) / CONFIG_FILE, str(exc)) from None
