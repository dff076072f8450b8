"""Mixed-precision training on CUDA: a few hundred steps in bf16, and in fp16 with the
grad scaler; the loss falls, and a run stopped halfway resumes where it stopped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from cuda_helpers import requires_cuda

from ddpm_core.train import STATE_DIR, TrainConfig, train

pytestmark = [*requires_cuda, pytest.mark.timeout(300)]

STEPS = 300


def _cfg(out: Path, precision: str, **kw) -> TrainConfig:
    base = dict(
        dataset="digits", out=str(out), preset="tiny", image_size=16, channels=1,
        class_cond=True, steps=STEPS, batch_size=64, lr=1e-3, warmup=20, sample_count=4,
        default_steps=10, device="cuda", precision=precision, seed=0,
    )  # fmt: skip
    return TrainConfig(**(base | kw))


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_learns_and_resumes(tmp_path: Path, precision: str) -> None:
    full = train(_cfg(tmp_path / "full", precision))
    first, last = _mean(full.losses[:20]), _mean(full.losses[-50:])
    half = STEPS // 2
    part = train(_cfg(tmp_path / "part", precision), progress=lambda p: p.step == half)
    state = json.loads((tmp_path / "part" / STATE_DIR / "state.json").read_text())
    rest = train(_cfg(tmp_path / "part", precision, resume_from=str(tmp_path / "part")))
    resumed = _mean(rest.losses[-50:])
    scale = (state["grad_scaler"] or {}).get("scale")
    print(
        f"{precision}: loss {first:.4f} (first 20 steps) -> {last:.4f} (last 50), "
        f"{full.skipped_steps} skipped step(s); resumed at {part.step}: last 50 {resumed:.4f}; "
        f"grad scale saved {scale}; {full.elapsed_s:.1f} s for {STEPS} steps"
    )
    assert full.step == STEPS and not full.stopped
    assert last < 0.6 * first, (first, last)
    if precision == "bf16":
        assert full.skipped_steps == 0 and state["grad_scaler"] is None
    else:  # the scaler may skip a few overflowing steps while its scale comes down
        assert full.skipped_steps <= 20 and scale is not None and math.isfinite(scale)
    assert part.stopped and part.step == half and state["step"] == half
    assert rest.step == STEPS and len(rest.losses) == STEPS - half
    # It went on from the saved state, not from scratch: its first losses are the trained
    # model's, and it ends where the uninterrupted run ends (cuDNN's kernels are not
    # bitwise deterministic, so the curves agree only closely).
    assert _mean(rest.losses[:20]) < 0.8 * first
    assert abs(resumed - last) <= 0.2 * last, (resumed, last)
