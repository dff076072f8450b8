"""Sampling a loaded checkpoint with per-image seeds: the one-call entry point."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm_core.checkpoint import Checkpoint
from ddpm_core.guidance import make_denoiser
from ddpm_core.samplers import StepCallback, StepTable, sample, step_table
from ddpm_core.seeding import BatchNoise

__all__ = ["resolve_device", "step_table_for", "check_labels", "generate"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA device is available")
    return dev


def step_table_for(
    ckpt: Checkpoint,
    steps: int | Sequence[int] | None = None,
    sampler: str | None = None,
    eta: float | None = None,
) -> StepTable:
    """The step table of a request on ``ckpt``; unset options take the checkpoint's defaults."""
    cfg = ckpt.config
    return step_table(
        ckpt.schedule,
        cfg.default_steps if steps is None else steps,
        sampler or cfg.default_sampler,
        cfg.variance_type,
        cfg.default_eta if eta is None else eta,
        cfg.clip_denoised,
        prediction_type=cfg.prediction_type,
    )


def check_labels(ckpt: Checkpoint, labels: torch.Tensor) -> None:
    """ValueError unless ``ckpt`` is class-conditional and every label is one of its classes."""
    n = ckpt.config.num_classes
    if n is None:
        raise ValueError("this checkpoint is unconditional: labels are not accepted")
    if bool(((labels < 0) | (labels >= n)).any()):
        raise ValueError(f"labels must lie in [0, {n - 1}]")


def generate(
    ckpt: Checkpoint,
    count: int = 1,
    seed: int = 0,
    steps: int | Sequence[int] | None = None,
    sampler: str | None = None,
    eta: float | None = None,
    labels: int | Sequence[int] | None = None,
    guidance_scale: float | None = None,
    x_T: torch.Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Sample ``count`` images from ``ckpt``; image i uses seed ``seed + i``.

    Unset options take the checkpoint's defaults. ``labels`` is one class for all
    images or one per image (class-conditional checkpoints only). ``x_T`` replaces
    the seeded initial noise (the step noise still comes from the seeds).
    ``batch_size`` bounds the images per network call; the images do not depend
    on it. Returns float32 images (count, C, H, W) in [-1, 1] on the model's device.
    """
    cfg = ckpt.config
    device = next(ckpt.model.parameters()).device
    y = None
    if labels is not None:
        y = torch.as_tensor(labels, dtype=torch.long, device=device).expand(count).clone()
        check_labels(ckpt, y)
    if batch_size is not None and count > batch_size:
        return torch.cat(
            [
                generate(
                    ckpt,
                    min(batch_size, count - start),
                    seed + start,
                    steps,
                    sampler,
                    eta,
                    None if y is None else y[start : start + batch_size],
                    guidance_scale,
                    None if x_T is None else x_T[start : start + batch_size],
                    autocast_dtype,
                    callback,
                )
                for start in range(0, count, batch_size)
            ]
        )
    table = step_table_for(ckpt, steps, sampler, eta)
    scale = cfg.default_guidance_scale if guidance_scale is None else guidance_scale
    denoiser = make_denoiser(ckpt.model, y, scale, autocast_dtype)
    noise = BatchNoise(seed, count, device)
    x = noise.initial((cfg.channels, cfg.image_size, cfg.image_size))
    if x_T is not None:
        if tuple(x_T.shape) != tuple(x.shape):
            raise ValueError(f"x_T must have shape {tuple(x.shape)}, got {tuple(x_T.shape)}")
        x = x_T.to(device=device, dtype=torch.float32)
    with torch.inference_mode():
        return sample(denoiser, table, x, noise, callback)
