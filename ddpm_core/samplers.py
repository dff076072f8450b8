"""Reverse-process samplers as per-step coefficient tables.

Every sampler here is one affine update per step,

    x0_hat = clip( (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) )          (DDPM Eq. 15)
    x_prev = a_k x_t + b_k eps + c_k x0_hat + sigma_k z,   z ~ N(0, I)

whose coefficients depend only on the step index k. A :class:`StepTable`
holds them for one (sampler, timestep list); :func:`denoise_step` applies a
row of coefficients per batch row, so rows of different jobs, samplers and
step counts can share one network call. :func:`sample` is the plain loop
over one table.

- DDPM ancestral (Ho et al. 2020, Eq. 6-7): a = sqrt(alpha'_t)(1-abar_prev)/(1-abar_t),
  c = sqrt(abar_prev) beta'_t/(1-abar_t), b = 0, and sigma^2 = beta-tilde'_t
  (``fixed_small``) or beta'_t (``fixed_large``), where beta'_t = 1 - abar_t/abar_prev
  is the (respaced) beta of the step.
- DDIM (Song et al. 2021, Eq. 12 and 16):
  x_prev = sqrt(abar_prev) x0_hat + d eps_hat + sigma z, with d = sqrt(1 - abar_prev - sigma^2)
  and sigma = eta sqrt((1-abar_prev)/(1-abar_t)) sqrt(beta'_t). By default eps_hat is the
  noise implied by the *clipped* x0_hat, eps_hat = (x_t - sqrt(abar_t) x0_hat)/sqrt(1-abar_t)
  (as improved-diffusion and GLIDE do): then a = d/sqrt(1-abar_t),
  c = sqrt(abar_prev) - d sqrt(abar_t/(1-abar_t)), b = 0. Keeping x0 and the direction
  consistent matters under guidance, whose extrapolated eps pushes x0 out of range.
  ``ddim_eps="model"`` uses the network's eps instead (a = 0, b = d, c = sqrt(abar_prev)),
  which is diffusers' DDIMScheduler default (``use_clipped_model_output=False``).

The previous timestep of a step is the next entry of the timestep list; after the
last entry abar_prev = 1, which makes sigma = 0: the final step adds no noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .checkpoint_config import SAMPLERS, VARIANCE_TYPES
from .schedule import NoiseSchedule

__all__ = [
    "Denoiser",
    "StepCallback",
    "SamplingCancelled",
    "StepTable",
    "step_table",
    "stack_coefs",
    "denoise_step",
    "sample",
    "SAMPLERS",
    "VARIANCE_TYPES",
]

SamplerName = Literal["ddpm", "ddim"]
VarianceType = Literal["fixed_small", "fixed_large"]

# Columns of StepTable.coefs.
SQRT_RECIP_ABAR, SQRT_ONE_MINUS_ABAR, CLIP, COEF_XT, COEF_EPS, COEF_X0, SIGMA = range(7)
NUM_COLUMNS = 7

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A network wrapped as eps = denoiser(x_t, t), t being one model timestep per row."""

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], bool | None]
"""callback(step, total, x_t, x0_hat) after each step; a truthy return stops sampling."""


class SamplingCancelled(Exception):
    """Raised by :func:`sample` when its callback asked to stop."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"sampling stopped after step {step} of {total}")
        self.step = step
        self.total = total


@dataclass(frozen=True)
class StepTable:
    """Coefficients of one sampler on one timestep list, in sampling order.

    ``timesteps[k]`` is the model timestep fed to the network at step k
    (descending); ``coefs[k]`` the float64 row of the update (see module doc).
    """

    timesteps: torch.Tensor
    coefs: torch.Tensor
    sampler: str
    description: str = ""

    def __len__(self) -> int:
        return len(self.timesteps)

    def has_noise(self, k: int) -> bool:
        """Whether step k draws noise; a host-side fact, so no device sync is needed."""
        return bool(self.coefs[k, SIGMA] > 0)


def step_table(
    schedule: NoiseSchedule,
    steps: int | Sequence[int] | None = None,
    sampler: SamplerName = "ddpm",
    variance: VarianceType = "fixed_small",
    eta: float = 0.0,
    clip_denoised: bool = True,
    ddim_eps: Literal["x0", "model"] = "x0",
) -> StepTable:
    """Build the table of ``sampler`` on ``schedule`` respaced to ``steps``.

    ``steps`` is a number of steps (timesteps ``round(linspace(0, T-1, S))``),
    an explicit list of timesteps (any order; they are sampled descending), or
    None for every timestep of the schedule.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (expected one of {SAMPLERS})")
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance type {variance!r} (expected one of {VARIANCE_TYPES})")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if ddim_eps not in ("x0", "model"):
        raise ValueError(f"ddim_eps must be 'x0' or 'model', got {ddim_eps!r}")
    spaced = schedule if steps is None else schedule.respace(steps)

    # Sampling order: descending timesteps; "prev" is the next entry, abar = 1 past the end.
    abar = spaced.alphas_cumprod.flip(0)
    abar_prev = torch.cat([abar[1:], torch.ones(1, dtype=torch.float64)])
    beta = 1.0 - abar / abar_prev  # beta'_t of the respaced chain
    alpha = 1.0 - beta

    coefs = torch.zeros(len(abar), NUM_COLUMNS, dtype=torch.float64)
    coefs[:, SQRT_RECIP_ABAR] = (1.0 / abar).sqrt()
    coefs[:, SQRT_ONE_MINUS_ABAR] = (1.0 - abar).sqrt()
    coefs[:, CLIP] = 1.0 if clip_denoised else 0.0
    if sampler == "ddpm":
        # Posterior q(x_prev | x_t, x0) of DDPM Eq. 7 with x0 := x0_hat.
        coefs[:, COEF_X0] = abar_prev.sqrt() * beta / (1.0 - abar)
        coefs[:, COEF_XT] = alpha.sqrt() * (1.0 - abar_prev) / (1.0 - abar)
        # fixed_small: beta-tilde, the true posterior's; fixed_large: beta (DDPM Sec. 3.2).
        small = (1.0 - abar_prev) / (1.0 - abar) * beta
        var = small if variance == "fixed_small" else beta.clone()
        var[-1] = 0.0  # the final step returns the posterior mean
        coefs[:, SIGMA] = var.sqrt()
        description = f"ddpm/{variance}"
    else:
        # DDIM Eq. 16 for sigma, Eq. 12 for the update.
        sigma = eta * ((1.0 - abar_prev) / (1.0 - abar) * beta).sqrt()
        direction = (1.0 - abar_prev - sigma**2).clamp(min=0.0).sqrt()
        if ddim_eps == "x0":
            coefs[:, COEF_XT] = direction / (1.0 - abar).sqrt()
            coefs[:, COEF_X0] = abar_prev.sqrt() - direction * (abar / (1.0 - abar)).sqrt()
        else:
            coefs[:, COEF_X0] = abar_prev.sqrt()
            coefs[:, COEF_EPS] = direction
        coefs[:, SIGMA] = sigma
        description = f"ddim/eta={eta:g}"
    return StepTable(spaced.timesteps.flip(0).clone(), coefs, sampler, description)


def stack_coefs(
    rows: Sequence[torch.Tensor], device: torch.device | str | None = None
) -> torch.Tensor:
    """Stack per-row coefficient rows (each ``table.coefs[k]``) into one (B, 7) tensor."""
    return torch.stack(list(rows)).to(device)


def denoise_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    coefs: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step for a batch, each row with its own coefficient row.

    ``coefs`` is (B, 7) (see :func:`stack_coefs`); ``noise`` is z, needed when any
    row has sigma > 0. Returns (x_prev, x0_hat). Computed in ``x_t``'s dtype.
    """
    c = coefs.to(device=x_t.device, dtype=x_t.dtype).reshape(*coefs.shape, *([1] * (x_t.ndim - 1)))
    eps = eps.to(x_t.dtype)
    # Subtract before scaling: at large t, 1/sqrt(abar) ~ 150 would amplify float32 rounding
    # of two large products in the expanded form sqrt(1/abar) x_t - sqrt(1/abar - 1) eps.
    x0 = (x_t - c[:, SQRT_ONE_MINUS_ABAR] * eps) * c[:, SQRT_RECIP_ABAR]
    x0 = torch.where(c[:, CLIP] > 0, x0.clamp(-1.0, 1.0), x0)
    x_prev = c[:, COEF_XT] * x_t + c[:, COEF_EPS] * eps + c[:, COEF_X0] * x0
    if noise is not None:
        x_prev = x_prev + c[:, SIGMA] * noise.to(x_t.dtype)
    return x_prev, x0


NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]
"""noise_fn(k, x_t) -> z for step k, shaped like x_t (called only when step k has noise)."""


def sample(
    model: Denoiser,
    table: StepTable,
    x: torch.Tensor,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the reverse chain of ``table`` from x_T = ``x`` and return x_0.

    ``noise_fn`` supplies z for steps that draw noise (default: ``torch.randn_like``;
    pass per-image generators for reproducible seeds, see ``ddpm_core.seeding``).
    ``callback(step, total, x_t, x0_hat)`` runs after every step, ``step`` counting
    from 1; if it returns a truthy value, :class:`SamplingCancelled` is raised.
    """
    total = len(table)
    coefs_dev = table.coefs.to(device=x.device, dtype=torch.float32)
    timesteps_dev = table.timesteps.to(x.device)
    for k in range(total):
        t = timesteps_dev[k].expand(x.shape[0])
        eps = model(x, t)
        z = None
        if table.has_noise(k):
            z = noise_fn(k, x) if noise_fn is not None else torch.randn_like(x)
        coefs = coefs_dev[k].expand(x.shape[0], NUM_COLUMNS)
        x, x0 = denoise_step(x, eps, coefs, z)
        if callback is not None and callback(k + 1, total, x, x0):
            raise SamplingCancelled(k + 1, total)
    return x
