"""DDPM training of a UNet (Ho et al. 2020, Algorithm 1):

    repeat: x0 ~ data, t ~ Uniform{0..T-1}, eps ~ N(0, I)
            take a gradient step on || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t) ||^2

or, with ``prediction_type`` v_prediction or sample, on the same loss with the target
v = sqrt(abar_t) eps - sqrt(1-abar_t) x0 (Salimans & Ho 2022) or x0 in place of eps.
AdamW, linear warm-up then cosine or constant learning rate, gradient clipping and
accumulation, optional bf16/fp16 autocast, an EMA of the weights, and label dropout
for classifier-free guidance (Ho & Salimans 2022, Algorithm 1).

- :mod:`~ddpm_core.config.train`: :class:`TrainConfig`, every option of a run (no torch).
- :mod:`~ddpm_core.train.steps`: what each step uses, as pure functions of (config, step):
  its learning rate, its batch, its random draws.
- :mod:`~ddpm_core.train.loop`: :class:`TrainLoop` (``run_loop``, ``run_step``,
  ``forward_backward``, ``optimize``, ``save``...) and :func:`train`.
- :mod:`~ddpm_core.train.state`: the resumable state, saved and restored.
- :mod:`~ddpm_core.train.reports`: what a run reports (progress, result, divergence).

Everything random in a step (batch indices, flips, t, eps, label dropout) is drawn from
a generator seeded by (seed, step), and dropout draws from the global torch RNG whose
state is saved, so a resumed run reproduces the uninterrupted one exactly.
"""

from ddpm_core.config.train import TrainConfig, build_unet_config, public_train_config
from ddpm_core.train.loop import TrainLoop, command_line, train
from ddpm_core.train.reports import (
    MAX_NONFINITE_STEPS,
    ProgressFn,
    TrainingDiverged,
    TrainProgress,
    TrainResult,
)
from ddpm_core.train.state import STATE_DIR
from ddpm_core.train.steps import batch_indices, lr_at

__all__ = [
    "STATE_DIR",
    "MAX_NONFINITE_STEPS",
    "TrainingDiverged",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "ProgressFn",
    "TrainLoop",
    "lr_at",
    "batch_indices",
    "build_unet_config",
    "public_train_config",
    "train",
    "command_line",
]
