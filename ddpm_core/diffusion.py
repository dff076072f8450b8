"""The forward process, x0-prediction, the true posterior and the training loss.

Equation numbers refer to Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic
Models" (2020). ``t`` is an index into ``schedule`` (for a full schedule, the
timestep itself), one per batch row.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ddpm_core.schedule import NoiseSchedule

__all__ = [
    "extract",
    "q_sample",
    "predict_x0",
    "predict_eps",
    "posterior_mean",
    "posterior_mean_from_eps",
    "posterior_variance",
    "velocity",
    "training_target",
    "diffusion_loss",
]


def extract(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gather ``table[t]`` per row, cast to ``x``'s dtype, shaped to broadcast over ``x``."""
    values = table.to(t.device)[t].to(x.dtype)
    return values.reshape(-1, *([1] * (x.ndim - 1)))


def q_sample(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)  (Eq. 4)."""
    abar = schedule.alphas_cumprod
    return extract(abar.sqrt(), t, x0) * x0 + extract((1 - abar).sqrt(), t, x0) * noise


def predict_x0(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Invert Eq. 4 for x_0: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (Eq. 15)."""
    abar = schedule.alphas_cumprod
    return extract((1 / abar).sqrt(), t, x_t) * x_t - extract((1 / abar - 1).sqrt(), t, x_t) * eps


def predict_eps(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The noise implied by x_t and x_0: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    abar = schedule.alphas_cumprod
    return (x_t - extract(abar.sqrt(), t, x_t) * x0) / extract((1 - abar).sqrt(), t, x_t)


def posterior_mean(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """mu-tilde_t(x_t, x_0) of q(x_{t-1} | x_t, x_0)  (Eq. 7).

    mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) * x_0
       + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) * x_t
    """
    abar, abar_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    coef_x0 = abar_prev.sqrt() * schedule.betas / (1 - abar)
    coef_xt = schedule.alphas.sqrt() * (1 - abar_prev) / (1 - abar)
    return extract(coef_x0, t, x_t) * x0 + extract(coef_xt, t, x_t) * x_t


def posterior_mean_from_eps(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """The same mean written with the noise (Eq. 11):
    mu = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps)."""
    abar = schedule.alphas_cumprod
    coef_eps = schedule.betas / (1 - abar).sqrt()
    return extract(1 / schedule.alphas.sqrt(), t, x_t) * (x_t - extract(coef_eps, t, x_t) * eps)


def posterior_variance(schedule: NoiseSchedule, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """beta-tilde_t of q(x_{t-1} | x_t, x_0)  (Eq. 7), broadcast over ``x``."""
    return extract(schedule.posterior_variance, t, x)


def velocity(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, Sec. 4 and App. D):
    the velocity of x_t along the circle of angle phi_t = arctan(sqrt(1-abar_t)/sqrt(abar_t))."""
    abar = schedule.alphas_cumprod
    return extract(abar.sqrt(), t, x0) * noise - extract((1 - abar).sqrt(), t, x0) * x0


def training_target(
    prediction_type: str,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """What the network learns to output for x_t = q_sample(x0, t, noise): the noise
    (``epsilon``, Ho et al. Eq. 14), v (``v_prediction``) or x_0 itself (``sample``)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(schedule, x0, t, noise)
    if prediction_type == "sample":
        return x0
    raise ValueError(
        f"unknown prediction type {prediction_type!r} (expected epsilon, v_prediction or sample)"
    )


def diffusion_loss(
    model_eps: torch.Tensor,
    noise: torch.Tensor,
    kind: Literal["mse", "l1"] = "mse",
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """L_simple (Eq. 14): || eps - eps_theta(x_t, t) ||^2, or its L1 variant; for other
    prediction types ``noise`` is their target (see :func:`training_target`).

    With ``reduction="none"`` returns one loss per row (mean over pixels).
    """
    if kind == "mse":
        per_elem = F.mse_loss(model_eps.float(), noise.float(), reduction="none")
    elif kind == "l1":
        per_elem = F.l1_loss(model_eps.float(), noise.float(), reduction="none")
    else:
        raise ValueError(f"unknown loss {kind!r} (expected 'mse' or 'l1')")
    per_row = per_elem.flatten(1).mean(dim=1)
    return per_row.mean() if reduction == "mean" else per_row
