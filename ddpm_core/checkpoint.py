"""Checkpoint directories: config.json, model/ema safetensors, meta.json, samples.png.

Weights are read through safetensors only, so opening a checkpoint can never
run code. Every problem with a checkpoint surfaces as :class:`CheckpointError`
naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .samplers import SAMPLERS, VARIANCE_TYPES
from .schedule import NoiseSchedule
from .unet import UNet, UNetConfig

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointConfig",
    "Checkpoint",
    "read_config",
    "read_meta",
    "save_checkpoint",
    "load_weights",
    "load_checkpoint",
]

FORMAT_VERSION = 1
CONFIG_FILE, META_FILE = "config.json", "meta.json"
MODEL_FILE, EMA_FILE, SAMPLES_FILE = "model.safetensors", "ema.safetensors", "samples.png"


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable or does not match its config."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True)
class CheckpointConfig:
    """What a checkpoint's config.json holds besides the weights."""

    unet: UNetConfig
    schedule: dict = field(default_factory=lambda: {"kind": "linear", "num_train_timesteps": 1000})
    variance_type: str = "fixed_small"
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

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_config(self.schedule)

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
            "clip_denoised": self.clip_denoised,
            "default_steps": self.default_steps,
            "default_sampler": self.default_sampler,
            "default_eta": self.default_eta,
            "default_guidance_scale": self.default_guidance_scale,
        }

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointConfig:
        """Parse and validate; raises ValueError with the reason."""
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"format_version {version!r} is not supported (expected 1)")
        if not isinstance(d.get("unet"), dict):
            raise ValueError("'unet' section is missing")
        cfg = cls(
            unet=UNetConfig.from_dict(d["unet"]),
            schedule=dict(d.get("schedule") or {}),
            variance_type=d.get("variance_type", "fixed_small"),
            default_steps=int(d.get("default_steps", 100)),
            default_sampler=d.get("default_sampler", "ddim"),
            default_eta=float(d.get("default_eta", 0.0)),
            default_guidance_scale=float(d.get("default_guidance_scale", 1.0)),
            clip_denoised=bool(d.get("clip_denoised", True)),
            class_names=d.get("class_names"),
        )
        cfg.noise_schedule()  # validates the schedule section
        if cfg.variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type {cfg.variance_type!r} not in {VARIANCE_TYPES}")
        if cfg.default_sampler not in SAMPLERS:
            raise ValueError(f"default_sampler {cfg.default_sampler!r} not in {SAMPLERS}")
        if not 1 <= cfg.default_steps <= cfg.num_train_timesteps:
            raise ValueError(f"default_steps {cfg.default_steps} outside [1, T]")
        if cfg.class_names is not None and len(cfg.class_names) != (cfg.num_classes or 0):
            raise ValueError("class_names must have one name per class")
        return cfg


@dataclass
class Checkpoint:
    """A loaded checkpoint: the network (eval mode) with its schedule and metadata."""

    path: Path
    config: CheckpointConfig
    meta: dict
    model: UNet
    weights: str  # "ema" or "model"

    @property
    def schedule(self) -> NoiseSchedule:
        return self.config.noise_schedule()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(path, "file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, "expected a JSON object")
    return data


def read_config(path: str | os.PathLike) -> CheckpointConfig:
    """Read and validate ``config.json`` of the checkpoint directory ``path``."""
    file = Path(path) / CONFIG_FILE
    try:
        return CheckpointConfig.from_dict(_read_json(file))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(file, f"invalid config ({exc})") from None


def read_meta(path: str | os.PathLike) -> dict:
    """``meta.json`` of the checkpoint directory, or {} when it has none."""
    file = Path(path) / META_FILE
    return _read_json(file) if file.exists() else {}


def _state_dict(weights: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = weights.state_dict() if isinstance(weights, nn.Module) else weights
    # safetensors wants contiguous, unshared CPU tensors; clones also drop views of EMA buffers.
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sd.items()}


def save_checkpoint(
    path: str | os.PathLike,
    config: CheckpointConfig,
    model: nn.Module | dict[str, torch.Tensor],
    ema: nn.Module | dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
    samples_png: bytes | None = None,
    overwrite: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (a temporary sibling, then a rename).

    ``ema`` defaults to the raw weights. ``meta`` gets ``created_at`` if absent.
    ``extra(tmp_dir)`` may add files (e.g. resumable training state) before the
    rename, so that they appear together with the weights or not at all.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        meta = {"created_at": datetime.now(UTC).isoformat(timespec="seconds")} | (meta or {})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        save_file(_state_dict(model), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        save_file(_state_dict(ema or model), str(tmp / EMA_FILE), metadata={"format": "pt"})
        if samples_png is not None:
            (tmp / SAMPLES_FILE).write_bytes(samples_png)
        if extra is not None:
            extra(tmp)
        os.chmod(tmp, 0o755)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def load_weights(file: Path, model: nn.Module) -> None:
    """Load a safetensors file into ``model``, strictly; raise CheckpointError on any mismatch."""
    if not file.exists():
        raise CheckpointError(file, "file is missing")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(file, f"not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"shape mismatch: {wrong[:3]}")
    if problems:
        raise CheckpointError(file, "weights do not match config.json: " + "; ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(file, f"non-finite values in {bad[:3]}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | os.PathLike,
    use_ema: bool = True,
    device: torch.device | str = "cpu",
) -> Checkpoint:
    """Load a checkpoint directory; the network comes back in eval mode on ``device``."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(root, "not a checkpoint directory")
    config = read_config(root)
    meta = read_meta(root)
    model = UNet(config.unet)
    weights = "ema" if use_ema else "model"
    load_weights(root / (EMA_FILE if use_ema else MODEL_FILE), model)
    model.eval().requires_grad_(False).to(device)
    return Checkpoint(root, config, meta, model, weights)
