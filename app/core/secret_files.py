"""Secrets kept in the data directory: one file each, mode 0600, created once."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["secret_file"]


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret stored in ``path``; created from ``make()`` with mode 0600 if absent.
    Several processes starting together agree: the first to create the file wins."""
    path = Path(path)
    if path.exists():
        return path.read_text().strip()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text().strip()
    secret = make()
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
