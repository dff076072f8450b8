"""A tiny training run on digits for the training tests (seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

from ddpm_core.train import TrainConfig


def tiny_train_config(out: Path, **kw) -> TrainConfig:
    """8x8 digits, a 16-channel tiny UNet, on the CPU; ``kw`` overrides any field."""
    base = dict(
        dataset="digits",
        out=str(out),
        preset="tiny",
        image_size=8,
        channels=1,
        unet_overrides={"base_channels": 16, "norm_groups": 4},
        lr=2e-3,
        warmup=2,
        sample_count=4,
        default_steps=4,
        measure_defaults="off",  # measured where a test asks for it
        device="cpu",
    )
    return TrainConfig(**(base | kw))
