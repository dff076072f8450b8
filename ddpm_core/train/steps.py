"""What optimizer step ``step`` uses, as pure functions of (config, step): its learning
rate, its dataset indices and its random draws. Nothing here keeps state, so a run
resumed at any step draws exactly what the uninterrupted one did."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpm_core.config.train import TrainConfig
from ddpm_core.data import ImageDataset

__all__ = ["lr_at", "batch_indices", "step_generator", "Batch", "draw_batch"]

_MIX = 1_000_003  # odd multiplier that spreads (seed, step) over distinct generator seeds


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up over ``warmup``
    steps, lr * (step+1)/warmup, then constant or cosine,
    lr * (m + (1-m) * (1 + cos(pi * p)) / 2) with p the post-warm-up progress in [0, 1]."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup)
    p = min(1.0, (step - cfg.warmup) / span)
    m = cfg.min_lr_ratio
    return cfg.lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p)))


def batch_indices(seed: int, step: int, per_step: int, n: int) -> torch.Tensor:
    """Dataset indices of optimizer step ``step``: a function of (seed, step) alone.

    Sample number p = step * per_step + i is element p mod n of the permutation of
    epoch p // n, that permutation drawn from a generator seeded by (seed, epoch):
    every image is seen once per epoch, and resuming needs no sampler state.
    """
    pos = torch.arange(step * per_step, (step + 1) * per_step)
    epochs, offsets = pos // n, pos % n
    out = torch.empty(per_step, dtype=torch.long)
    for e in epochs.unique().tolist():
        g = torch.Generator().manual_seed(seed * _MIX + e)
        perm = torch.randperm(n, generator=g)
        sel = epochs == e
        out[sel] = perm[offsets[sel]]
    return out


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``'s draws: flips, t, eps and label dropout."""
    return torch.Generator().manual_seed(seed * _MIX + step + 1)


@dataclass(frozen=True)
class Batch:
    """The global batch of one optimizer step (all micro-batches, every rank's rows), on
    the CPU: images x0 and labels y, timesteps t, noise eps, and which labels to drop."""

    x0: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    drop: torch.Tensor


def draw_batch(cfg: TrainConfig, ds: ImageDataset, step: int) -> Batch:
    """Step ``step``'s batch of ``batch_size * accumulate`` images of ``ds``, with
    t ~ Uniform{0..T-1}, eps ~ N(0, I) and label dropout w.p. ``p_uncond``."""
    per_step = cfg.batch_size * cfg.accumulate
    g = step_generator(cfg.seed, step)
    x0, y = ds.batch(batch_indices(cfg.seed, step, per_step, len(ds)), g)
    # The draws' order is part of the run: flips (in ds.batch), t, eps, label dropout.
    t = torch.randint(0, cfg.timesteps, (per_step,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    drop = torch.rand(per_step, generator=g) < cfg.p_uncond
    return Batch(x0, y, t, noise, drop)
