"""Wrapping a network as a :data:`~ddpm_core.samplers.Denoiser`, with classifier-free guidance."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .samplers import Denoiser

__all__ = ["make_denoiser"]


def make_denoiser(
    model: nn.Module,
    labels: torch.Tensor | None = None,
    guidance_scale: float | torch.Tensor = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> Denoiser:
    """eps(x_t, t) of ``model`` for fixed ``labels``, guided when the scale is not 1.

    Classifier-free guidance (Ho & Salimans 2022, Eq. 6):
    eps = eps(x, null) + w (eps(x, y) - eps(x, null)); w = 1 is the conditional
    model alone, w = 0 the unconditional one. ``guidance_scale`` may be one value
    or one per row. The network may run under autocast (``autocast_dtype``); eps
    is returned in float32 so that the update itself stays in full precision.
    """
    null = getattr(model, "null_label", None)
    if labels is not None and null is None:
        raise ValueError("labels given, but the model is not class-conditional")
    scale = torch.as_tensor(guidance_scale, dtype=torch.float32)
    guided = labels is not None and bool((scale != 1.0).any())

    def autocast(x: torch.Tensor):
        if autocast_dtype is None:
            return nullcontext()
        return torch.autocast(x.device.type, dtype=autocast_dtype)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(x):
            if not guided:
                return model(x, t, labels).float()
            # One network call for both halves: conditional rows, then null-class rows.
            y = labels.to(x.device)
            eps_c, eps_u = (
                model(
                    torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)])
                )
                .float()
                .chunk(2)
            )
        w = scale.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
        return eps_u + w * (eps_c - eps_u)

    return denoise
