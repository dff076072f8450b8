"""The resumable state of a training run, saved next to its checkpoint and restored.

Saved without pickle: tensors through ``torch.save`` of plain containers (read back with
``weights_only=True``) and scalars as JSON, in ``<checkpoint>/train_state/``:
``tensors.pt`` (model, EMA, optimizer), ``rng.pt`` (torch, CUDA and numpy generator
states) and ``state.json`` (step, config, counters, the rest of the RNG states).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm_core.config.train import TrainConfig
from ddpm_core.ema import EMA
from ddpm_core.train.reports import LossCurve, SmoothedLoss
from ddpm_core.train.steps import lr_at

__all__ = ["STATE_DIR", "Counters", "seed_rngs", "save_state", "load_state", "restore_state"]

STATE_DIR = "train_state"  # inside the checkpoint directory

SavedState = tuple[dict, dict, dict]
"""(state.json, tensors.pt, rng.pt) as read: plain containers, so ranks can send it."""


@dataclass
class Counters:
    """Where a run stands: its step, smoothed loss, skipped steps and training time."""

    step: int = 0
    smooth: SmoothedLoss = field(default_factory=SmoothedLoss)
    skipped_steps: int = 0
    elapsed_s: float = 0.0  # training time, over every process that ran the run
    curve: LossCurve = field(default_factory=LossCurve)


def seed_rngs(seed: int) -> None:
    """Seed every global generator a run draws from (torch, numpy, Python)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _rng_json() -> dict[str, Any]:
    np_state, py_state = np.random.get_state(), random.getstate()
    return {
        "numpy_rng": {
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
    }


def save_state(
    ckpt_dir: Path,
    cfg: TrainConfig,
    counters: Counters,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: EMA,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Write ``ckpt_dir/train_state``; ``ckpt_dir`` is the checkpoint's temporary directory,
    renamed into place with the weights, so state and weights are never out of step."""
    step = counters.step
    tmp = ckpt_dir / STATE_DIR
    tmp.mkdir(parents=True)
    cpu = lambda sd: {k: v.detach().cpu().clone() for k, v in sd.items()}  # noqa: E731
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    # Optimizer state is a nested dict of tensors and numbers: loadable with weights_only=True.
    torch.save(
        {"model": cpu(model.state_dict()), "ema": ema.state_dict(), "optimizer": opt.state_dict()},
        tmp / "tensors.pt",
    )
    torch.save(rng | {"numpy": torch.from_numpy(np.random.get_state()[1].copy())}, tmp / "rng.pt")
    state = {
        "step": step,
        "train_config": cfg.to_dict(),
        "ema": ema.extra_state(),
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "lr_scheduler": {"kind": cfg.lr_schedule, "last_step": step, "lr": lr_at(cfg, step)},
        **_rng_json(),
        "smooth_loss": counters.smooth.value,
        "smooth_weight": counters.smooth.weight,
        "skipped_steps": counters.skipped_steps,
        "elapsed_s": counters.elapsed_s,
        "loss_curve": counters.curve.to_json(),
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def load_state(path: Path) -> SavedState:
    """The state saved in checkpoint directory ``path``; FileNotFoundError when it has none."""
    state_dir = path / STATE_DIR
    if not (state_dir / "state.json").exists():
        raise FileNotFoundError(f"{path} has no resumable training state ({STATE_DIR}/)")
    state = json.loads((state_dir / "state.json").read_text())
    tensors = torch.load(state_dir / "tensors.pt", map_location="cpu", weights_only=True)
    rng = torch.load(state_dir / "rng.pt", map_location="cpu", weights_only=True)
    return state, tensors, rng


def _restore_rng(state: dict, rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy_rng"]
    np.random.set_state(
        ("MT19937", rng["numpy"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    v, internal, gauss = state["python_rng"]
    random.setstate((v, tuple(internal), gauss))


def restore_state(
    saved: SavedState,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: EMA,
    scaler: torch.amp.GradScaler | None,
) -> Counters:
    """Load ``saved`` into the run's objects and the global generators; its counters."""
    state, tensors, rng = saved
    model.load_state_dict(tensors["model"])
    opt.load_state_dict(tensors["optimizer"])
    ema.load_state_dict(tensors["ema"], state["ema"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    _restore_rng(state, rng)
    return Counters(
        step=int(state["step"]),
        smooth=SmoothedLoss(state["smooth_loss"], state["smooth_weight"]),
        skipped_steps=state["skipped_steps"],
        elapsed_s=state.get("elapsed_s", 0.0),
        curve=LossCurve.from_json(state.get("loss_curve")),  # absent in older states
    )
