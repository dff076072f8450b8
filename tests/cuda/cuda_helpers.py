"""Helpers of the CUDA tests (marked ``cuda``, skipped with a reason without a GPU).

``bench/gpu_check.sh`` runs them on a GPU machine (``pytest -m cuda tests/cuda``).
Each test prints the figures it bounds (``-s`` or the ``-rA`` summary shows them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from svc_helpers import (  # noqa: F401
    BF16_IMAGE_MEAN,
    BF16_MEAN,
    BF16_P99,
    cpu_reference,
    same_images,
)

from app.cli.offline import checkpoint_dir
from worker.generate.engine import Engine, GenSpec

NO_CUDA = "needs a CUDA device: run bench/gpu_check.sh on a GPU machine"

requires_cuda = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA),
]


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Full fp32 on the GPU: cuDNN convolutions otherwise use TF32 (10-bit mantissa)."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def memory_cap(total_bytes: int) -> Iterator[None]:
    """Cap this process's CUDA caching allocator at ``total_bytes`` (a smaller GPU)."""
    torch.cuda.empty_cache()
    size = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, total_bytes / size))
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


DIGITS = str(checkpoint_dir("digits"))


def engine_images(engine: Engine, specs: list[GenSpec], timeout: float = 120) -> list[torch.Tensor]:
    """Submit ``specs``, wait, and return each job's images (each must succeed)."""
    jobs = [engine.submit(s) for s in specs]
    for j in jobs:
        assert j.wait(timeout), "job did not finish"
        assert j.status == "succeeded", (j.spec.job_id, j.error and j.error.message)
    return [j.images for j in jobs]


def random_checkpoint(path: Path, preset_name: str, image_size: int, channels: int = 3) -> Path:
    """A randomly initialised checkpoint of a preset (no trained weights needed)."""
    from ddpm_core.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm_core.unet import UNet, preset

    torch.manual_seed(0)
    unet = preset(
        preset_name, image_size=image_size, in_channels=channels, out_channels=channels,
        dropout=0.0,
    )  # fmt: skip
    cfg = CheckpointConfig(unet=unet, default_steps=20, default_sampler="ddpm")
    return save_checkpoint(path, cfg, UNet(unet), meta={"dataset": "random"})
