"""A checkpoint's ``schedule`` section, parsed and validated without torch.

:class:`ddpm_core.schedule.NoiseSchedule` builds its tables from the parsed section; the
API checks checkpoints with it alone.
"""

from __future__ import annotations

from typing import Any

from ddpm_core.config.checks import ConfigError, check_choice, check_float, check_int
from ddpm_core.config.names import SCHEDULE_KINDS

__all__ = ["SCHEDULE_PARAMS", "MAX_TRAIN_TIMESTEPS", "parse_schedule"]

MAX_TRAIN_TIMESTEPS = 100_000
# Parameters of each schedule kind with their defaults (see NoiseSchedule.linear/cosine).
SCHEDULE_PARAMS: dict[str, dict[str, float]] = {
    "linear": {"beta_start": 1e-4, "beta_end": 0.02},
    "cosine": {"s": 0.008, "max_beta": 0.999},
}


def parse_schedule(d: Any, name: str = "schedule") -> dict[str, Any]:
    """A validated ``schedule`` section with every parameter filled in: ``kind``,
    ``num_train_timesteps`` and the kind's parameters (ConfigError naming the field)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(name, f"must be an object, got {d!r}")
    kind = check_choice(f"{name}.kind", d.get("kind", "linear"), SCHEDULE_KINDS)
    T = check_int(
        f"{name}.num_train_timesteps", d.get("num_train_timesteps", 1000), 1, MAX_TRAIN_TIMESTEPS
    )
    params = SCHEDULE_PARAMS[kind]
    unknown = sorted(str(k) for k in set(d) - {"kind", "num_train_timesteps", *params})
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"is not a parameter of a {kind} schedule")
    out: dict[str, Any] = {"kind": kind, "num_train_timesteps": T}
    for key, default in params.items():
        value = d.get(key, default)
        if key == "s":
            out[key] = check_float(f"{name}.s", value, 0.0, 1.0)
        else:  # a variance: in (0, 1]
            out[key] = check_float(f"{name}.{key}", value, 0.0, 1.0, lo_open=True)
    return out
