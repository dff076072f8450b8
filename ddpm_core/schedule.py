"""Noise schedules of the forward process q(x_t | x_{t-1}) and their respacing.

All tables are float64 and are cast by the code that uses them. A schedule
keeps, for each of its indices, the timestep of the *trained* model that the
index stands for (``timesteps``); for an unrespaced schedule that is the
identity, for a respaced one the retained subset.

The formulas on tables live here, once each, as functions of the alphas_cumprod
abar_t, abar_{t-1} and beta_t of a chain: :mod:`ddpm_core.diffusion` applies them to
a schedule, :mod:`ddpm_core.samplers` to a respaced chain in sampling order. Equation
numbers: Ho, Jain & Abbeel 2020 ("DDPM"), Nichol & Dhariwal 2021 ("Improved DDPM"),
Lu et al. 2022 ("DPM-Solver").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ddpm_core.config.schedule import parse_schedule

__all__ = [
    "NoiseSchedule",
    "default_timesteps",
    "linspace_timesteps",
    "alphas_cumprod_prev",
    "betas_of",
    "posterior_variance_of",
    "posterior_mean_coefficients",
    "half_log_snr",
]


def alphas_cumprod_prev(abar: torch.Tensor) -> torch.Tensor:
    """abar_{t-1} for each t of the ascending ``abar``, with abar_0 := 1 before the first."""
    return torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])


def betas_of(abar: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - abar_t / abar_{t-1}: the betas of the chain whose marginals are abar
    (DDPM Sec. 2, abar_t = prod_{s<=t} (1 - beta_s)); on a subset of the timesteps, the
    respaced chain of Improved DDPM Sec. 4, which keeps the original marginals."""
    return 1.0 - abar / abar_prev


def posterior_variance_of(
    abar: torch.Tensor, abar_prev: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t, the variance of the posterior
    q(x_{t-1} | x_t, x_0) (DDPM Eq. 7)."""
    return (1.0 - abar_prev) / (1.0 - abar) * beta


def posterior_mean_coefficients(
    abar: torch.Tensor, abar_prev: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_x0, c_xt) of the posterior mean mu-tilde_t = c_x0 x_0 + c_xt x_t (DDPM Eq. 7):
    c_x0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t), c_xt = sqrt(alpha_t) (1 - abar_{t-1}) /
    (1 - abar_t), with alpha_t = 1 - beta_t."""
    coef_x0 = abar_prev.sqrt() * beta / (1.0 - abar)
    coef_xt = (1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar)
    return coef_x0, coef_xt


def half_log_snr(abar: torch.Tensor) -> torch.Tensor:
    """lambda_t = log(alpha_t / sigma_t) = (log abar_t - log(1 - abar_t)) / 2, the time
    variable of DPM-Solver (Sec. 3.1; alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t))."""
    return 0.5 * (abar.log() - (-abar).log1p())


def default_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The timesteps kept when sampling with ``steps`` steps: ``round(linspace(0, T-1, S))``."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    if steps == 1:
        # linspace would keep t=0 alone, a single step from pure noise that denoises nothing.
        return [num_train_timesteps - 1]
    grid = torch.linspace(0, num_train_timesteps - 1, steps, dtype=torch.float64)
    return sorted({int(v) for v in torch.round(grid).tolist()})


def linspace_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """diffusers' "linspace" spacing (its DPMSolverMultistepScheduler default): the S
    timesteps ``round(linspace(0, T-1, S+1))`` without their first entry, t = 0.

    The chain then ends with one jump from t ~ T/S straight to the clean sample, which
    suits the ODE solvers: a step onto t = 0 covers a long stretch of log-SNR that their
    extrapolation from the previous x0_hat handles badly. With S = T, every timestep.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    if steps == num_train_timesteps:
        return list(range(num_train_timesteps))
    # The points are at least one apart (S <= T - 1), so rounding keeps them distinct.
    grid = torch.linspace(0, num_train_timesteps - 1, steps + 1, dtype=torch.float64)
    return [int(v) for v in torch.round(grid).tolist()[1:]]


@dataclass(frozen=True)
class NoiseSchedule:
    """A (possibly respaced) variance schedule beta_1..beta_T and its derived tables.

    ``betas[k]`` is the variance of step k; ``timesteps[k]`` the trained model's
    timestep that index k corresponds to. ``num_train_timesteps`` is the T the
    model was trained with, which respacing keeps.
    """

    betas: torch.Tensor
    timesteps: torch.Tensor
    num_train_timesteps: int
    kind: str = "linear"
    params: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.betas.dtype != torch.float64:
            object.__setattr__(self, "betas", self.betas.to(torch.float64))
        if self.betas.ndim != 1 or len(self.betas) != len(self.timesteps):
            raise ValueError("betas and timesteps must be 1-D and of equal length")
        if not bool(((self.betas > 0) & (self.betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]")

    # -- constructors -------------------------------------------------------

    @classmethod
    def linear(
        cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """DDPM Sec. 4: betas linear from 1e-4 to 0.02 over T=1000."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        params = {"beta_start": beta_start, "beta_end": beta_end}
        return cls(betas, torch.arange(num_train_timesteps), num_train_timesteps, "linear", params)

    @classmethod
    def cosine(
        cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
    ) -> NoiseSchedule:
        """Improved DDPM Eq. 17: abar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s) / (1 + s))
        pi/2); the betas of those marginals (:func:`betas_of`), capped at ``max_beta``."""

        def f(t: float) -> float:
            return math.cos((t / num_train_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        # abar(t) up to the factor 1 / f(0), which the ratios of betas_of cancel.
        f_t = torch.tensor([f(t) for t in range(num_train_timesteps + 1)], dtype=torch.float64)
        betas_t = betas_of(f_t[1:], f_t[:-1]).clamp(max=max_beta)
        params = {"s": s, "max_beta": max_beta}
        return cls(
            betas_t, torch.arange(num_train_timesteps), num_train_timesteps, "cosine", params
        )

    @classmethod
    def from_config(cls, cfg: dict) -> NoiseSchedule:
        """Build from a checkpoint's ``schedule`` section (see ``to_config``); ValueError
        (a ConfigError naming the field) for an unknown kind or a parameter out of range."""
        p = parse_schedule(cfg)
        T = p["num_train_timesteps"]
        if p["kind"] == "linear":
            return cls.linear(T, p["beta_start"], p["beta_end"])
        return cls.cosine(T, p["s"], p["max_beta"])

    # -- derived tables (float64) ------------------------------------------

    @property
    def alphas(self) -> torch.Tensor:
        """alpha_t = 1 - beta_t (DDPM Sec. 2)."""
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t = prod_{s<=t} alpha_s (DDPM Sec. 2, the marginals of Eq. 4)."""
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """abar_{t-1}, with abar_0 := 1 before the first step."""
        return alphas_cumprod_prev(self.alphas_cumprod)

    @property
    def posterior_variance(self) -> torch.Tensor:
        """beta-tilde_t of each step (DDPM Eq. 7, :func:`posterior_variance_of`)."""
        return posterior_variance_of(self.alphas_cumprod, self.alphas_cumprod_prev, self.betas)

    def __len__(self) -> int:
        return len(self.betas)

    # -- respacing ---------------------------------------------------------

    def respace(self, steps: int | Sequence[int]) -> NoiseSchedule:
        """Keep a subset of timesteps and re-derive betas from the kept alphas_cumprod.

        ``steps`` is a count S (timesteps ``round(linspace(0, T-1, S))``) or an
        explicit list of timesteps in any order. As in improved-diffusion (Improved DDPM
        Sec. 4), beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}} (:func:`betas_of`) so that the
        respaced chain has exactly the marginals abar_{t_k} of the original one.
        """
        if len(self) != self.num_train_timesteps:
            raise ValueError("respace a full schedule, not an already respaced one")
        if isinstance(steps, int):
            kept = default_timesteps(self.num_train_timesteps, steps)
        else:
            kept = sorted({int(t) for t in steps})
            if not kept:
                raise ValueError("timesteps list is empty")
            if kept[0] < 0 or kept[-1] >= self.num_train_timesteps:
                raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}]")
            if len(kept) != len(steps):
                raise ValueError("timesteps must not repeat")
        abar = self.alphas_cumprod[kept]
        betas = betas_of(abar, alphas_cumprod_prev(abar))
        return NoiseSchedule(
            betas, torch.tensor(kept), self.num_train_timesteps, self.kind, dict(self.params)
        )

    def to_config(self) -> dict:
        """The JSON description of a full schedule (respacing happens at sampling time)."""
        return {"kind": self.kind, "num_train_timesteps": self.num_train_timesteps, **self.params}
