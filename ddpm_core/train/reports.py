"""What a training run reports: its progress after every step, its result, its divergence,
and the running figures behind them (a smoothed loss, a throughput)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LossCurve",
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


@dataclass
class LossCurve:
    """The run's curve, ``[step, smoothed loss, lr]`` points spread evenly over all of it
    in at most ``limit`` points: when full, every other point goes and the stride doubles.
    Kept with the checkpoint (``meta.json``) and its resumable state, so a finished run
    can be drawn again, a resumed one included."""

    points: list[list[float]] = field(default_factory=list)
    stride: int = 1
    limit: int = 256

    def add(self, step: int, loss: float, lr: float) -> None:
        if step % self.stride or not math.isfinite(loss):
            return
        self.points.append([step, round(loss, 6), lr])
        if len(self.points) > self.limit:
            self.stride *= 2
            self.points = [p for p in self.points if int(p[0]) % self.stride == 0]

    def through(self, step: int, loss: float, lr: float) -> list[list[float]]:
        """The points, ending at ``step`` (the last step, which the stride may skip)."""
        if (self.points and self.points[-1][0] == step) or not math.isfinite(loss):
            return list(self.points)
        return [*self.points, [step, round(loss, 6), lr]]

    def to_json(self) -> dict[str, Any]:
        return {"points": self.points, "stride": self.stride, "limit": self.limit}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> LossCurve:
        if not d:
            return cls()
        return cls([list(p) for p in d["points"]], int(d["stride"]), int(d["limit"]))
