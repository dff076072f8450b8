"""Reading docker-compose files as Compose does, for tests on a machine without Docker."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESET = object()  # Compose's `!reset` tag: drop the value inherited from earlier files


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset or empty: Compose refuses to start."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
    ``${VAR?error}`` and ``$$`` as Compose resolves them."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, op, arg = m.group(1), m.group(2), m.group(3) or ""
            val = env.get(name)
            missing = val is None or (val == "" and op in (":-", ":?"))
            if op in (":?", "?") and missing:
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            if op in (":-", "-") and missing:
                return arg
            return val or ""

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def merge(base: Any, over: Any) -> Any:
    """Compose's merge of override files: mappings merge, sequences and scalars replace."""
    if over is RESET:
        return RESET
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            merged = merge(base.get(k), v) if k in base else v
            if merged is RESET:
                out.pop(k, None)
            else:
                out[k] = merged
        return out
    return copy.deepcopy(over)


def load(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The merged, interpolated project of ``files`` (relative to the repo root)."""
    project: dict[str, Any] = {}
    for f in files:
        project = merge(project, yaml.load((ROOT / f).read_text(), Loader=ComposeLoader))
    return interpolate(project, dict(os.environ if env is None else env))
