"""What a training run reports: its progress after every step, its result, its divergence,
and the running figures behind them (a smoothed loss, a throughput)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_NONFINITE_STEPS",
    "TrainingDiverged",
    "TrainProgress",
    "TrainResult",
    "ProgressFn",
    "SmoothedLoss",
    "Throughput",
]

# Consecutive steps with a non-finite loss that are skipped before the run is given up.
MAX_NONFINITE_STEPS = 5


class TrainingDiverged(RuntimeError):
    """The loss or the weights became non-finite: the run stops and saves nothing more."""


@dataclass
class TrainProgress:
    """What the progress callback receives after every optimizer step."""

    step: int
    total_steps: int
    loss: float  # smoothed (bias-corrected EMA over ~50 steps)
    loss_raw: float  # this step's loss (NaN for a skipped step)
    lr: float
    images_per_sec: float
    skipped_steps: int = 0
    elapsed_s: float = 0.0
    sample_path: str | None = None  # set on steps that wrote a preview grid
    sample_png: bytes | None = None
    checkpoint_path: str | None = None  # set on steps that saved a checkpoint


@dataclass
class TrainResult:
    """What :func:`~ddpm_core.train.train` returns once the run has ended or stopped."""

    checkpoint: Path
    step: int
    total_steps: int
    final_loss: float  # smoothed loss at the last step
    losses: list[float]  # raw loss of every step run in this call (NaN: skipped)
    skipped_steps: int
    stopped: bool  # stopped early by the callback / should_stop
    elapsed_s: float
    device: str


ProgressFn = Callable[[TrainProgress], bool | None]


@dataclass
class SmoothedLoss:
    """An exponential moving average of the loss over ~50 steps, bias-corrected as Adam's
    moments are: ``value`` / ``weight``, where ``weight`` is the average of ones."""

    value: float = 0.0
    weight: float = 0.0

    def update(self, loss: float) -> None:
        self.value = 0.98 * self.value + 0.02 * loss
        self.weight = 0.98 * self.weight + 0.02

    @property
    def mean(self) -> float:
        """The smoothed loss (NaN before the first finite step)."""
        return self.value / self.weight if self.weight else float("nan")


class Throughput:
    """Images per second over a window that restarts every 5 seconds."""

    def __init__(self, now: float) -> None:
        self.since, self.images = now, 0

    def update(self, images: int, now: float) -> float:
        """Count ``images`` more at time ``now``; the rate of the current window."""
        self.images += images
        rate = self.images / max(now - self.since, 1e-9)
        if now - self.since > 5.0:
            self.since, self.images = now, 0
        return rate
