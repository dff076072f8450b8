"""Reverse-process samplers as per-step coefficient tables.

Every sampler here is one affine update per step. From the network's output
``out`` (eps, v or x0, see ``prediction_type``) it forms

    x0_hat = clip( (p_k x_t + q_k out) r_k )      eps: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    eps_hat = (u_k x_t + v_k out) w_k             the network's own noise estimate
    x_prev = a_k x_t + b_k eps_hat + c_k x0_hat + d1_k x0_hat' + d2_k x0_hat'' + sigma_k z

with z ~ N(0, I) and x0_hat', x0_hat'' the x0_hat of the row's previous two
steps (multistep solvers only). The coefficients depend only on the step
index k. A :class:`StepTable` holds them for one (sampler, timestep list,
prediction type); :func:`denoise_step` applies a row of coefficients per batch
row, so rows of different jobs, samplers and step counts share one network call
(each row brings its own short history). :func:`sample` is the plain loop.

Prediction types, with a = sqrt(abar_t), s = sqrt(1 - abar_t) (Salimans & Ho 2022, Sec. 4
and App. D for v = a eps - s x0):

- ``epsilon``: x0 = (x_t - s eps) / a;  eps = out.
- ``v_prediction``: x0 = a x_t - s v;  eps = s x_t + a v.
- ``sample``: x0 = out;  eps = (x_t - a x0) / s.

Samplers:

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
- DPM-Solver++(2M) and (3M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its
  third-order multistep form): deterministic multistep solvers of the diffusion ODE in
  the data prediction x0_hat, stepping in lambda = log(a/s). From lambda_c to lambda_n,
  h = lambda_n - lambda_c, the first-order step is DDIM's,
  x_n = (s_n/s_c) x_t + a_n (1 - e^-h) x0_hat; the higher orders add finite differences of
  the previous x0_hat (the "midpoint" form, as diffusers' ``solver_type="midpoint"``).
  The first steps have no history and run at order 1 (then 2); the last step, which lands
  on abar = 1, is always order 1; with fewer than 15 steps (``lower_order_final``, as
  diffusers) the one before it runs at order at most 2. ``dpm++2m-sde`` is the
  stochastic second-order variant (diffusers' ``sde-dpmsolver++``): it adds noise at
  every step but the last, as ancestral DDPM does, at DPM-Solver++'s step counts.

The previous timestep of a step is the next entry of the timestep list; after the
last entry abar_prev = 1, which makes sigma = 0: the final step adds no noise and
returns x0_hat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ddpm_core.config.names import PREDICTION_TYPES, SAMPLERS, VARIANCE_TYPES
from ddpm_core.diffusion import output_coefficients
from ddpm_core.schedule import (
    NoiseSchedule,
    betas_of,
    half_log_snr,
    linspace_timesteps,
    posterior_mean_coefficients,
    posterior_variance_of,
)

__all__ = [
    "Denoiser",
    "StepCallback",
    "SamplingCancelled",
    "StepTable",
    "step_table",
    "stack_coefs",
    "stack_history",
    "denoise_step",
    "sample",
    "SAMPLERS",
    "VARIANCE_TYPES",
    "PREDICTION_TYPES",
]

SamplerName = Literal["ddpm", "ddim", "dpm++2m", "dpm++3m", "dpm++2m-sde"]
VarianceType = Literal["fixed_small", "fixed_large"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]

# Columns of StepTable.coefs (see the module doc).
(
    X0_XT,
    X0_OUT,
    X0_SCALE,
    EPS_XT,
    EPS_OUT,
    EPS_SCALE,
    CLIP,
    COEF_XT,
    COEF_EPS,
    COEF_X0,
    COEF_H1,
    COEF_H2,
    SIGMA,
) = range(13)
NUM_COLUMNS = 13
HISTORY_COLUMNS = (COEF_H1, COEF_H2)
# The multistep solvers: their order, i.e. one more than the x0_hat they keep.
_ORDER = {"dpm++2m": 2, "dpm++3m": 3, "dpm++2m-sde": 2}
# diffusers' lower_order_final applies below this many steps.
LOWER_ORDER_FINAL_BELOW = 15

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A network wrapped as out = denoiser(x_t, t), t being one model timestep per row; ``out`` is
what the network predicts (eps, v or x0: the table's prediction type)."""

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
    ``history`` is how many previous x0_hat a row must keep (0 but for multistep
    solvers); ``prediction_type`` what the network's output means.
    """

    timesteps: torch.Tensor
    coefs: torch.Tensor
    sampler: str
    description: str = ""
    history: int = 0
    prediction_type: str = "epsilon"

    def __len__(self) -> int:
        return len(self.timesteps)

    def has_noise(self, k: int) -> bool:
        """Whether step k draws noise; a host-side fact, so no device sync is needed."""
        return bool(self.coefs[k, SIGMA] > 0)


def _output_columns(coefs: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> None:
    """Fill the columns that turn the network output into x0_hat and eps_hat (DDPM Eq. 15
    and its v and x0 forms: :func:`~ddpm_core.diffusion.output_coefficients`)."""
    to_x0, to_eps = output_coefficients(prediction_type, abar)
    coefs[:, X0_XT], coefs[:, X0_OUT], coefs[:, X0_SCALE] = to_x0
    coefs[:, EPS_XT], coefs[:, EPS_OUT], coefs[:, EPS_SCALE] = to_eps


def _dpm_solver_pp(
    coefs: torch.Tensor,
    abar: torch.Tensor,
    abar_prev: torch.Tensor,
    order: int,
    lower_final: bool,
    sde: bool = False,
) -> None:
    """The DPM-Solver++ multistep coefficients (midpoint form), float64.

    Row k steps from lambda_k to lambda_{k+1}; its x0_hat history holds the
    x0_hat of steps k-1 and k-2. With D the finite differences of diffusers'
    ``multistep_dpm_solver_{second,third}_order_update``, every update is linear in
    (x0_hat, x0_hat', x0_hat''), so the table stores those three weights. ``sde``: the
    stochastic variant (Lu et al. 2022, Sec. 5; diffusers' ``sde-dpmsolver++``),
    x_n = (s_n/s_c) e^-h x_t + a_n (1 - e^-2h)(D0 + D1/2) + s_n sqrt(1 - e^-2h) z.
    """
    n = len(abar)
    lam = half_log_snr(abar)  # lambda = log(a / s) of each step's own timestep
    for k in range(n):
        final = k == n - 1  # lands on abar_prev = 1: lambda = +inf
        s_c = (1.0 - abar[k]).sqrt()
        if final:
            coefs[k, COEF_XT], coefs[k, COEF_X0] = 0.0, 1.0  # e^-h = 0: x0_hat itself
            continue
        a_n, s_n = abar_prev[k].sqrt(), (1.0 - abar_prev[k]).sqrt()
        h = half_log_snr(abar_prev[k]) - lam[k]  # the step in lambda (DPM-Solver++ Alg. 2)
        em1 = torch.expm1(-h)  # e^-h - 1, exact for small h
        step_order = min(order, k + 1)  # only k previous x0_hat exist
        if lower_final and n < LOWER_ORDER_FINAL_BELOW and k == n - 2:
            step_order = min(step_order, 2)
        if sde:  # SDE-DPM-Solver++(2M): x_n = (s_n/s_c) e^-h x_t + a_n (1 - e^-2h) D + noise
            coefs[k, COEF_XT] = s_n / s_c * torch.exp(-h)
            phi = -a_n * torch.expm1(-2.0 * h)  # a_n (1 - e^-2h)
            coefs[k, SIGMA] = s_n * (-torch.expm1(-2.0 * h)).sqrt()
        else:  # DPM-Solver++ (Alg. 2), first-order part: DDIM written in lambda
            coefs[k, COEF_XT] = s_n / s_c
            phi = -a_n * em1  # a_n (1 - e^-h): the first-order (DDIM) weight of D0
        w = torch.zeros(3, dtype=torch.float64)  # weights of (m0, m1, m2) = x0_hat now, -1, -2
        w[0] = phi
        if step_order >= 2:  # Alg. 2: D = (1 + 1/(2 r)) x0_hat - 1/(2 r) x0_hat'
            r0 = (lam[k] - lam[k - 1]) / h
            d1_0 = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) / r0
            if step_order == 2:
                w += 0.5 * phi * d1_0  # - 0.5 a_n (e^-h - 1) D1
            else:  # third-order multistep (diffusers' multistep_dpm_solver_third_order_update)
                r1 = (lam[k - 1] - lam[k - 2]) / h
                d1_1 = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                w += a_n * (em1 / h + 1.0) * d1
                w -= a_n * ((em1 + h) / h**2 - 0.5) * d2
        coefs[k, COEF_X0], coefs[k, COEF_H1], coefs[k, COEF_H2] = w[0], w[1], w[2]


def step_table(
    schedule: NoiseSchedule,
    steps: int | Sequence[int] | None = None,
    sampler: SamplerName = "ddpm",
    variance: VarianceType = "fixed_small",
    eta: float = 0.0,
    clip_denoised: bool = True,
    ddim_eps: Literal["x0", "model"] = "x0",
    prediction_type: PredictionType = "epsilon",
    lower_order_final: bool = True,
) -> StepTable:
    """Build the table of ``sampler`` on ``schedule`` respaced to ``steps``.

    ``steps`` is a number of steps, an explicit list of timesteps (any order; they are
    sampled descending), or None for every timestep of the schedule. A number S means the
    timesteps ``round(linspace(0, T-1, S))`` for DDPM and DDIM, and diffusers' "linspace"
    spacing without t = 0 for DPM-Solver++ (:func:`~ddpm_core.schedule.linspace_timesteps`,
    what ``DPMSolverMultistepScheduler.set_timesteps(S)`` gives). ``eta`` and ``ddim_eps``
    concern DDIM only, ``variance`` DDPM only, ``lower_order_final`` DPM-Solver++ only.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (expected one of {SAMPLERS})")
    if variance not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance type {variance!r} (expected one of {VARIANCE_TYPES})")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction type {prediction_type!r} (expected one of {PREDICTION_TYPES})"
        )
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if ddim_eps not in ("x0", "model"):
        raise ValueError(f"ddim_eps must be 'x0' or 'model', got {ddim_eps!r}")
    if isinstance(steps, int) and sampler in _ORDER:
        steps = linspace_timesteps(schedule.num_train_timesteps, steps)
    spaced = schedule if steps is None else schedule.respace(steps)

    # Sampling order: descending timesteps; "prev" is the next entry, abar = 1 past the end.
    abar = spaced.alphas_cumprod.flip(0)
    abar_prev = spaced.alphas_cumprod_prev.flip(0)
    beta = betas_of(abar, abar_prev)  # beta'_t of the respaced chain

    coefs = torch.zeros(len(abar), NUM_COLUMNS, dtype=torch.float64)
    _output_columns(coefs, abar, prediction_type)
    coefs[:, CLIP] = 1.0 if clip_denoised else 0.0
    history = 0
    if sampler == "ddpm":
        # Ancestral sampling (DDPM Eq. 6): the posterior mean of Eq. 7 with x0 := x0_hat.
        coefs[:, COEF_X0], coefs[:, COEF_XT] = posterior_mean_coefficients(abar, abar_prev, beta)
        # fixed_small: beta-tilde, the true posterior's; fixed_large: beta (DDPM Sec. 3.2).
        small = posterior_variance_of(abar, abar_prev, beta)
        var = small if variance == "fixed_small" else beta.clone()
        var[-1] = 0.0  # the final step returns the posterior mean
        coefs[:, SIGMA] = var.sqrt()
        description = f"ddpm/{variance}"
    elif sampler == "ddim":
        # DDIM Eq. 16: sigma = eta sqrt(beta-tilde'_t).
        sigma = eta * posterior_variance_of(abar, abar_prev, beta).sqrt()
        # DDIM Eq. 12: x_prev = sqrt(abar_prev) x0_hat + direction eps_hat + sigma z.
        direction = (1.0 - abar_prev - sigma**2).clamp(min=0.0).sqrt()
        if ddim_eps == "x0":
            # eps_hat implied by the clipped x0_hat (Eq. 4 solved for eps), folded into Eq. 12.
            coefs[:, COEF_XT] = direction / (1.0 - abar).sqrt()
            coefs[:, COEF_X0] = abar_prev.sqrt() - direction * (abar / (1.0 - abar)).sqrt()
        else:
            coefs[:, COEF_X0] = abar_prev.sqrt()
            coefs[:, COEF_EPS] = direction
        coefs[:, SIGMA] = sigma
        description = f"ddim/eta={eta:g}"
    else:
        order = _ORDER[sampler]
        sde = sampler.endswith("-sde")
        _dpm_solver_pp(coefs, abar, abar_prev, order, lower_order_final, sde)
        history = min(order - 1, len(abar) - 1)
        description = f"{sampler}/midpoint"
    if prediction_type != "epsilon":
        description += f"/{prediction_type}"
    return StepTable(
        spaced.timesteps.flip(0).clone(), coefs, sampler, description, history, prediction_type
    )


def stack_coefs(
    rows: Sequence[torch.Tensor], device: torch.device | str | None = None
) -> torch.Tensor:
    """Stack per-row coefficient rows (each ``table.coefs[k]``) into one (B, 13) tensor."""
    return torch.stack(list(rows)).to(device)


def stack_history(
    histories: Sequence[Sequence[torch.Tensor]], like: torch.Tensor
) -> list[torch.Tensor] | None:
    """Per-row x0_hat histories (most recent first, any length) as (B, ...) tensors, one per
    history position; rows that lack an entry get zeros (their coefficient there is 0).
    None when no row has a history."""
    depth = max((len(h) for h in histories), default=0)
    if depth == 0:
        return None
    zeros = torch.zeros_like(like)
    return [torch.stack([h[j] if len(h) > j else zeros for h in histories]) for j in range(depth)]


def denoise_step(
    x_t: torch.Tensor,
    out: torch.Tensor,
    coefs: torch.Tensor,
    noise: torch.Tensor | None = None,
    history: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step for a batch, each row with its own coefficient row.

    ``out`` is the network's output (eps, v or x0, as the rows' tables say); ``coefs`` is
    (B, 13) (see :func:`stack_coefs`); ``noise`` is z, needed when any row has sigma > 0;
    ``history`` the rows' previous x0_hat, most recent first (see :func:`stack_history`),
    needed by multistep rows past their first step. Returns (x_prev, x0_hat), x0_hat being
    what a multistep row keeps as its next history. Computed in ``x_t``'s dtype.
    """
    c = coefs.to(device=x_t.device, dtype=x_t.dtype).reshape(*coefs.shape, *([1] * (x_t.ndim - 1)))
    out = out.to(x_t.dtype)
    x0 = (c[:, X0_XT] * x_t + c[:, X0_OUT] * out) * c[:, X0_SCALE]
    x0 = torch.where(c[:, CLIP] > 0, x0.clamp(-1.0, 1.0), x0)
    eps = (c[:, EPS_XT] * x_t + c[:, EPS_OUT] * out) * c[:, EPS_SCALE]
    x_prev = c[:, COEF_XT] * x_t + c[:, COEF_EPS] * eps + c[:, COEF_X0] * x0
    for column, past in zip(HISTORY_COLUMNS, history or (), strict=False):
        x_prev = x_prev + c[:, column] * past.to(x_t.dtype)
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
    history: list[torch.Tensor] = []
    for k in range(total):
        t = timesteps_dev[k].expand(x.shape[0])
        out = model(x, t)
        z = None
        if table.has_noise(k):
            z = noise_fn(k, x) if noise_fn is not None else torch.randn_like(x)
        coefs = coefs_dev[k].expand(x.shape[0], NUM_COLUMNS)
        x, x0 = denoise_step(x, out, coefs, z, history)
        if table.history:
            history = [x0, *history][: table.history]
        if callback is not None and callback(k + 1, total, x, x0):
            raise SamplingCancelled(k + 1, total)
    return x
