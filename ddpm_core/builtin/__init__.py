"""Checkpoints shipped inside the package (``ddpm_core/builtin/<name>/``).

Imports nothing heavy (no torch), so the service can list them cheaply.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN_ROOT", "builtin_path", "list_builtin"]

BUILTIN_ROOT = Path(__file__).resolve().parent


def list_builtin() -> list[str]:
    """Names of the shipped checkpoints (directories holding a config.json), sorted."""
    return sorted(
        p.name
        for p in BUILTIN_ROOT.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and (p / "config.json").is_file()
    )


def builtin_path(name: str) -> Path:
    """The directory of the built-in checkpoint ``name``; KeyError if there is none."""
    if name not in list_builtin():
        raise KeyError(f"no built-in checkpoint {name!r} (available: {list_builtin()})")
    return BUILTIN_ROOT / name
