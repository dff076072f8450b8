"""The forward process, x0-prediction, the true posterior and the training loss.

Equation numbers refer to Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic
Models" (2020), "DDPM", unless another paper is named. ``t`` is an index into
``schedule`` (for a full schedule, the timestep itself), one per batch row. The
formulas on a schedule's tables are those of :mod:`ddpm_core.schedule`; the network's
output is turned into x0 and eps by :func:`output_coefficients`, which the samplers
tabulate too.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ddpm_core.schedule import NoiseSchedule, posterior_mean_coefficients

__all__ = [
    "extract",
    "Coefficient",
    "output_coefficients",
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


Coefficient = torch.Tensor | float
"""A per-timestep table (float64), or a constant."""


def output_coefficients(
    prediction_type: str, abar: torch.Tensor
) -> tuple[tuple[Coefficient, ...], tuple[Coefficient, ...]]:
    """How a network output ``out`` of ``prediction_type`` gives x0 and eps at alphas_cumprod
    ``abar``: ((p, q, r), (u, v, w)) with x0 = (p x_t + q out) r and eps = (u x_t + v out) w.

    With a = sqrt(abar_t), s = sqrt(1 - abar_t): ``epsilon``: x0 = (x_t - s eps) / a
    (DDPM Eq. 15); ``v_prediction``: x0 = a x_t - s v, eps = s x_t + a v (Salimans & Ho
    2022, Sec. 4 and App. D); ``sample``: eps = (x_t - a x0) / s (Eq. 4 solved for eps).
    """
    a, s = abar.sqrt(), (1.0 - abar).sqrt()
    if prediction_type == "epsilon":
        # Subtract before scaling: at large t, 1/a ~ 150 would amplify float32 rounding of
        # two large products in the expanded form x_t / a - (s / a) eps.
        return (1.0, -s, 1.0 / a), (0.0, 1.0, 1.0)
    if prediction_type == "v_prediction":
        return (a, -s, 1.0), (s, a, 1.0)
    if prediction_type == "sample":
        return (0.0, 1.0, 1.0), (1.0, -a, 1.0 / s)
    raise ValueError(
        f"unknown prediction type {prediction_type!r} (expected epsilon, v_prediction or sample)"
    )


def _affine(
    coefs: tuple[Coefficient, ...], t: torch.Tensor, x_t: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """(p x_t + q out) r, each coefficient a table gathered at ``t`` or a constant."""
    p, q, r = (c if isinstance(c, float) else extract(c, t, x_t) for c in coefs)
    return (p * x_t + q * out) * r


def q_sample(
    schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)  (Eq. 4)."""
    abar = schedule.alphas_cumprod
    return extract(abar.sqrt(), t, x0) * x0 + extract((1 - abar).sqrt(), t, x0) * noise


def predict_x0(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Invert Eq. 4 for x_0 given the noise (Eq. 15, see :func:`output_coefficients`)."""
    to_x0, _ = output_coefficients("epsilon", schedule.alphas_cumprod)
    return _affine(to_x0, t, x_t, eps)


def predict_eps(
    schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The noise implied by x_t and x_0 (Eq. 4 solved for eps, see :func:`output_coefficients`)."""
    _, to_eps = output_coefficients("sample", schedule.alphas_cumprod)
    return _affine(to_eps, t, x_t, x0)


def posterior_mean(
    schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """mu-tilde_t(x_t, x_0) of q(x_{t-1} | x_t, x_0)  (Eq. 7, see
    :func:`~ddpm_core.schedule.posterior_mean_coefficients`)."""
    coef_x0, coef_xt = posterior_mean_coefficients(
        schedule.alphas_cumprod, schedule.alphas_cumprod_prev, schedule.betas
    )
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
    (``epsilon``, Eq. 14), v (``v_prediction``) or x_0 itself (``sample``); the samplers
    turn each back into x0 and eps by :func:`output_coefficients`."""
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
