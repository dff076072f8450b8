"""Noise schedules of the forward process q(x_t | x_{t-1}) and their respacing.

All tables are float64 and are cast by the code that uses them. A schedule
keeps, for each of its indices, the timestep of the *trained* model that the
index stands for (``timesteps``); for an unrespaced schedule that is the
identity, for a respaced one the retained subset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ddpm_core.config.schedule import parse_schedule

__all__ = ["NoiseSchedule", "default_timesteps", "linspace_timesteps"]


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
        """DDPM (Ho et al. 2020, Sec. 4): betas linear from 1e-4 to 0.02 over T=1000."""
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        params = {"beta_start": beta_start, "beta_end": beta_end}
        return cls(betas, torch.arange(num_train_timesteps), num_train_timesteps, "linear", params)

    @classmethod
    def cosine(
        cls, num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
    ) -> NoiseSchedule:
        """Nichol & Dhariwal 2021, Eq. 17: abar(t) = f(t) / f(0),
        f(t) = cos^2(((t/T + s) / (1 + s)) pi/2); betas capped at ``max_beta``."""

        def f(t: float) -> float:
            return math.cos((t / num_train_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(num_train_timesteps)]
        betas_t = torch.tensor(betas, dtype=torch.float64)
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
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t = prod_{s<=t} alpha_s (DDPM Eq. 4)."""
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        """abar_{t-1}, with abar_0 := 1 before the first step."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        """beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t (DDPM Eq. 7)."""
        return (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * self.betas

    def __len__(self) -> int:
        return len(self.betas)

    # -- respacing ---------------------------------------------------------

    def respace(self, steps: int | Sequence[int]) -> NoiseSchedule:
        """Keep a subset of timesteps and re-derive betas from the kept alphas_cumprod.

        ``steps`` is a count S (timesteps ``round(linspace(0, T-1, S))``) or an
        explicit list of timesteps in any order. As in improved-diffusion,
        beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}} so that the respaced chain has
        exactly the marginals abar_{t_k} of the original one.
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
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        betas = 1.0 - abar / abar_prev
        return NoiseSchedule(
            betas, torch.tensor(kept), self.num_train_timesteps, self.kind, dict(self.params)
        )

    def to_config(self) -> dict:
        """The JSON description of a full schedule (respacing happens at sampling time)."""
        return {"kind": self.kind, "num_train_timesteps": self.num_train_timesteps, **self.params}
