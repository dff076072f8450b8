"""The vocabulary of configs: every closed set of names a checkpoint, a sampler or a
training run accepts. Samplers, checkpoint files, the training options, the API and the
CLIs all take their choices from here."""

from __future__ import annotations

__all__ = [
    "SAMPLERS",
    "PREDICTION_TYPES",
    "VARIANCE_TYPES",
    "SCHEDULE_KINDS",
    "PRESET_NAMES",
    "LOSSES",
    "LR_SCHEDULES",
    "PRECISIONS",
    "AUTOCAST_SETTINGS",
    "CHANNEL_COUNTS",
    "NAME_PATTERN",
    "MEASURE_SETTINGS",
]

# DDPM ancestral, DDIM, and the DPM-Solver++ multistep solvers (2M, 3M and the SDE variant).
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++2m", "dpm++3m", "dpm++2m-sde")
# What the network predicts: the noise, v = sqrt(abar) eps - sqrt(1 - abar) x0, or x0 itself.
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
# The reverse process variance of DDPM ancestral sampling: beta-tilde_t or beta_t.
VARIANCE_TYPES: tuple[str, ...] = ("fixed_small", "fixed_large")
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "cosine")
# The UNet presets of ddpm_core.config.unet.PRESETS, smallest first.
PRESET_NAMES: tuple[str, ...] = ("tiny", "small", "ddpm-cifar10")
LOSSES: tuple[str, ...] = ("mse", "l1")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")
# Autocast of the training forward pass: none, bfloat16 or float16 (CUDA only).
PRECISIONS: tuple[str, ...] = ("no", "bf16", "fp16")
# Autocast of sampling: auto (measured per model and device), bf16, none (fp32).
AUTOCAST_SETTINGS: tuple[str, ...] = ("auto", "bf16", "none")
# Grey or RGB images.
CHANNEL_COUNTS: tuple[int, ...] = (1, 3)
# A checkpoint or dataset name as the service accepts it: a plain, lowercase file name.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Measuring a trained model's sampling defaults: skip it, the cheap statistics, or also FID.
MEASURE_SETTINGS: tuple[str, ...] = ("off", "fast", "fid")
