"""Wrapping a network as a :data:`~ddpm_core.samplers.Denoiser`, with classifier-free guidance.

Classifier-free guidance (Ho & Salimans 2022, Eq. 6):
eps = eps(x, null) + w (eps(x, y) - eps(x, null)); w = 1 is the conditional
model alone, w = 0 the unconditional one.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from ddpm_core.samplers import Denoiser

__all__ = ["guided_eps", "make_denoiser"]


def guided_eps(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None = None,
    scales: Sequence[float] | None = None,
) -> torch.Tensor:
    """eps for a batch in one network call, each row with its own guidance scale.

    Only rows whose scale is not 1 need the unconditional prediction, so only
    they are appended a second time with the null class. ``scales`` is a host
    list (no device sync to decide which rows are guided); rows without a label
    should carry the model's null class and scale 1. Returns float32.
    """
    null = getattr(model, "null_label", None)
    rows = [i for i, w in enumerate(scales or ()) if w != 1.0]
    if labels is None or null is None or not rows:
        return model(x, t, labels).float()
    n = x.shape[0]
    g = torch.tensor(rows, device=x.device)
    out = model(
        torch.cat([x, x[g]]), torch.cat([t, t[g]]), torch.cat([labels, torch.full_like(g, null)])
    ).float()
    eps, eps_uncond = out[:n].clone(), out[n:]
    w = torch.tensor([scales[i] for i in rows], device=x.device).view(-1, *([1] * (x.ndim - 1)))
    eps[g] = eps_uncond + w * (eps[g] - eps_uncond)
    return eps


def make_denoiser(
    model: nn.Module,
    labels: torch.Tensor | None = None,
    guidance_scale: float | Sequence[float] = 1.0,
    autocast_dtype: torch.dtype | None = None,
) -> Denoiser:
    """eps(x_t, t) of ``model`` for fixed ``labels``, guided where the scale is not 1.

    ``guidance_scale`` is one value or one per row. The network may run under
    autocast (``autocast_dtype``); eps comes back in float32 so that the update
    itself stays in full precision.
    """
    if labels is not None and getattr(model, "null_label", None) is None:
        raise ValueError("labels given, but the model is not class-conditional")

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if isinstance(guidance_scale, int | float):
            scales = [float(guidance_scale)] * x.shape[0]
        else:
            scales = [float(w) for w in guidance_scale]
        ctx = (
            torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
        )
        with ctx:
            y = None if labels is None else labels.to(x.device)
            return guided_eps(model, x, t, y, scales)

    return denoise
