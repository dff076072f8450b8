"""Exponential moving average of a model's weights, with a warm-up of the decay."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(decay: float, step: int, warmup: bool = True) -> float:
    """Decay used for update number ``step`` (0-based).

    With warm-up, decay_t = min(decay, (1 + t) / (10 + t)) (as in TF's
    ExponentialMovingAverage with num_updates, and diffusers' EMAModel): early
    averages forget the random initialisation quickly instead of being dragged
    towards it for ~1/(1-decay) steps.
    """
    if not warmup:
        return decay
    return min(decay, (1 + step) / (10 + step))


class EMA:
    """shadow <- decay_t * shadow + (1 - decay_t) * param, for every floating-point tensor.

    Buffers that are not floating point (none in the UNet) are copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the current weights of ``model`` into the average; returns the decay used."""
        d = ema_decay(self.decay, self.num_updates, self.warmup)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                # s = d * s + (1 - d) * v, written as s -= (1 - d)(s - v).
                s.lerp_(v.detach().to(s.dtype), 1.0 - d)
            else:
                s.copy_(v)
        self.num_updates += 1
        return d

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the averaged ones."""
        sd = model.state_dict()
        for k, v in self.shadow.items():
            sd[k].copy_(v.to(sd[k].dtype))

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors only (loadable with ``torch.load(weights_only=True)``/safetensors)."""
        return {k: v.detach().cpu().clone() for k, v in self.shadow.items()}

    def extra_state(self) -> dict:
        """The JSON scalars that go with :meth:`state_dict`."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, torch.Tensor], extra: dict | None = None) -> None:
        """Restore the averages (and, with ``extra``, the update count)."""
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors (e.g. {sorted(missing)[:3]})")
        for k, s in self.shadow.items():
            s.copy_(state[k].to(s.device, s.dtype))
        if extra is not None:
            self.num_updates = int(extra.get("num_updates", self.num_updates))
