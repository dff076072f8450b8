"""Server paths cut out of what is served: checkpoint metadata, recorded commands."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["scrub_paths"]

# An absolute POSIX path inside a string: "/" or "~/" not preceded by a word character, a
# dot, a colon or a slash (so "img/s", "1/2" and URLs stay), with at least two components
# (so a route such as "POST /train" stays), up to whitespace or a quote.
_ABS_PATH = re.compile(r"(?<![\w.:/~])~?/[^\s'\"/]+(?:/[^\s'\"/]*)+")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\[^\s'\"]*")


def _last_part(path: str) -> str:
    parts = [p for p in re.split(r"[/\\]", path) if p and p != "~" and not p.endswith(":")]
    return parts[-1] if parts else ""


def scrub_paths(value: Any) -> Any:
    """``value`` (parsed JSON) with every absolute path cut to its last component, e.g.
    ``/srv/data/runs/abc`` -> ``abc``: served metadata never reveals the server's layout."""
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_paths(v) for v in value]
    if not isinstance(value, str):
        return value
    if value.startswith(("/", "~/")) and not any(c.isspace() for c in value):
        return _last_part(value)  # the whole value is a path, e.g. {"out": "/srv/x"}
    value = _ABS_PATH.sub(lambda m: _last_part(m[0]), value)
    return _WINDOWS_PATH.sub(lambda m: _last_part(m[0]), value)
