"""What every ``ddpm`` sub-command shares: bad input as a one-line message with exit
code 2 (:class:`UsageError`, or a ``DDPM_*`` setting that does not parse), and checkpoint
arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["UsageError", "run", "checkpoint_dir"]


class UsageError(Exception):
    """Bad command-line input: reported as ``ddpm: error: ...`` with exit code 2."""


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command: exit code 2 with a one-line message on
    bad input (:class:`UsageError`), 130 on Ctrl-C."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        parser.exit(2, f"ddpm: error: {exc}\n")
    except Exception as exc:
        from app.core.settings import settings_error

        message = settings_error(exc)  # a DDPM_* variable that does not parse
        if message is None:
            raise
        parser.exit(2, f"ddpm: error: {message}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def checkpoint_dir(value: str) -> Path:
    """A checkpoint directory given as a path or as the name of a built-in checkpoint."""
    from ddpm_core.builtin import builtin_path, list_builtin

    path = Path(value)
    if not path.exists() and value in list_builtin():
        return builtin_path(value)
    return path
