"""How many images a job holds: the unit of the backlog that autoscaling reads
(``ddpm_backlog_images`` on ``/metrics``). A generation job holds up to ``DDPM_MAX_COUNT``
images, so counting jobs would misjudge the work by that factor."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ddpm_core.config.train import TrainConfig

__all__ = ["job_images"]

# The defaults of the options a stored train request may omit (it keeps only those set).
_TRAIN_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def job_images(kind: str, request: dict[str, Any]) -> int:
    """The images of a job from its stored request: a generation job's ``count``; a
    training job's training images (``steps`` x ``batch_size`` x ``accumulate``)."""
    if kind == "generate":
        return int(request["count"])
    opts = _TRAIN_DEFAULTS | (request.get("options") or {})
    return int(opts["steps"]) * int(opts["batch_size"]) * int(opts["accumulate"])
