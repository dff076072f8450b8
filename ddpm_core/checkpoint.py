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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

# The config and its validation need no torch; they live in ddpm_core.config.
from ddpm_core.config.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    META_FILE,
    CheckpointConfig,
    CheckpointError,
    check_config_size,
    read_config,
    read_meta,
)
from ddpm_core.config.size import DEFAULT_MAX_ACTIVATION_BYTES, DEFAULT_MAX_PARAMS
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.unet import UNet

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
    "non_finite_tensors",
]

MODEL_FILE, EMA_FILE, SAMPLES_FILE = "model.safetensors", "ema.safetensors", "samples.png"


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
        return NoiseSchedule.from_config(self.config.schedule)


def _state_dict(weights: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = weights.state_dict() if isinstance(weights, nn.Module) else weights
    # safetensors wants contiguous, unshared CPU tensors; clones also drop views of EMA buffers.
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sd.items()}


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (one device sync)."""
    names = [k for k, v in tensors.items() if v.is_floating_point()]
    if not names:
        return []
    ok = torch.stack([torch.isfinite(tensors[k]).all() for k in names]).cpu().tolist()
    return [k for k, good in zip(names, ok, strict=True) if not good]


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
    Weights with a NaN or infinity are refused (CheckpointError): nothing is written.
    """
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists")
    weights = {MODEL_FILE: _state_dict(model), EMA_FILE: _state_dict(ema or model)}
    for name, state in weights.items():
        bad = non_finite_tensors(state)
        if bad:
            raise CheckpointError(dest / name, f"refusing to save non-finite values in {bad[:3]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        meta = {"created_at": datetime.now(UTC).isoformat(timespec="seconds")} | (meta or {})
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        for name, state in weights.items():
            save_file(state, str(tmp / name), metadata={"format": "pt"})
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
    bad = non_finite_tensors(state)
    if bad:
        raise CheckpointError(file, f"non-finite values in {bad[:3]}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | os.PathLike,
    use_ema: bool = True,
    device: torch.device | str = "cpu",
    *,
    max_params: int | None = DEFAULT_MAX_PARAMS,
    max_activation_bytes: int | None = DEFAULT_MAX_ACTIVATION_BYTES,
) -> Checkpoint:
    """Load a checkpoint directory; the network comes back in eval mode on ``device``.

    The network's parameter count and activation memory per image are computed
    from config.json first: over ``max_params`` or ``max_activation_bytes``
    (None: unbounded) the load fails with CheckpointError before anything is allocated.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(root, "not a checkpoint directory")
    config = read_config(root)
    check_config_size(root, config, max_params, max_activation_bytes)
    meta = read_meta(root)
    model = UNet(config.unet)
    weights = "ema" if use_ema else "model"
    load_weights(root / (EMA_FILE if use_ema else MODEL_FILE), model)
    model.eval().requires_grad_(False).to(device)
    return Checkpoint(root, config, meta, model, weights)
