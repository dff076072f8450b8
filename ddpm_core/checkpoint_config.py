"""A checkpoint's ``config.json``: parsed and validated without torch.

The API validates checkpoints with this module (it never imports torch);
:mod:`ddpm_core.checkpoint` re-exports everything here and adds the weights.
Every field is type- and range-checked; a problem is a :class:`CheckpointError`
naming the file and the field, e.g. ``config.json: default_steps must be an
integer, got 'abc'``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm_core.unet_config import (
    DEFAULT_MAX_ACTIVATION_BYTES,
    DEFAULT_MAX_PARAMS,
    ConfigError,
    UNetConfig,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_model_size,
)

__all__ = [
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "META_FILE",
    "SAMPLERS",
    "VARIANCE_TYPES",
    "PREDICTION_TYPES",
    "SCHEDULE_KINDS",
    "MAX_TRAIN_TIMESTEPS",
    "ConfigError",
    "CheckpointError",
    "CheckpointConfig",
    "parse_schedule",
    "read_json",
    "read_config",
    "read_meta",
    "check_config_size",
    "scrub_paths",
]

FORMAT_VERSION = 1
CONFIG_FILE, META_FILE = "config.json", "meta.json"
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++2m", "dpm++3m", "dpm++2m-sde")
# What the network predicts: the noise, v = sqrt(abar) eps - sqrt(1 - abar) x0, or x0 itself.
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
VARIANCE_TYPES: tuple[str, ...] = ("fixed_small", "fixed_large")
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "cosine")
MAX_TRAIN_TIMESTEPS = 100_000
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


# Parameters of each schedule kind with their defaults (see NoiseSchedule.linear/cosine).
_SCHEDULE_PARAMS: dict[str, dict[str, float]] = {
    "linear": {"beta_start": 1e-4, "beta_end": 0.02},
    "cosine": {"s": 0.008, "max_beta": 0.999},
}


def parse_schedule(d: Any, name: str = "schedule") -> dict[str, Any]:
    """A validated ``schedule`` section with every parameter filled in: ``kind``,
    ``num_train_timesteps`` and the kind's parameters (ConfigError naming the field)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(name, f"must be an object, got {d!r}")
    kind = check_choice(f"{name}.kind", d.get("kind", "linear"), SCHEDULE_KINDS)
    T = check_int(
        f"{name}.num_train_timesteps", d.get("num_train_timesteps", 1000), 1, MAX_TRAIN_TIMESTEPS
    )
    params = _SCHEDULE_PARAMS[kind]
    unknown = sorted(str(k) for k in set(d) - {"kind", "num_train_timesteps", *params})
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"is not a parameter of a {kind} schedule")
    out: dict[str, Any] = {"kind": kind, "num_train_timesteps": T}
    for key, default in params.items():
        value = d.get(key, default)
        if key == "s":
            out[key] = check_float(f"{name}.s", value, 0.0, 1.0)
        else:  # a variance: in (0, 1]
            out[key] = check_float(f"{name}.{key}", value, 0.0, 1.0, lo_open=True)
    return out


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


# An absolute POSIX path inside a string: "/" or "~/" not preceded by a word character, a
# dot, a colon or a slash (so "img/s", "1/2" and URLs stay), with at least two components
# (so a route such as "POST /train" stays), up to whitespace or a quote.
_ABS_PATH = re.compile(r"(?<![\w.:/~])~?/[^\s'\"/]+(?:/[^\s'\"/]*)+")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\[^\s'\"]*")


def _last_part(path: str) -> str:
    parts = [p for p in re.split(r"[/\\]", path) if p and p != "~" and not p.endswith(":")]
    return parts[-1] if parts else ""


def scrub_paths(value: Any) -> Any:
    """``value`` (parsed JSON) with every absolute path cut to its last component, e.g.
    ``/srv/data/runs/abc`` -> ``abc``: served metadata never reveals the server's layout."""
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_paths(v) for v in value]
    if not isinstance(value, str):
        return value
    if value.startswith(("/", "~/")) and not any(c.isspace() for c in value):
        return _last_part(value)  # the whole value is a path, e.g. {"out": "/srv/x"}
    value = _ABS_PATH.sub(lambda m: _last_part(m[0]), value)
    return _WINDOWS_PATH.sub(lambda m: _last_part(m[0]), value)
