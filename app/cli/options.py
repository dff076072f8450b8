"""Command-line flags derived from the declared job options (:mod:`app.core.jobs.spec`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from app.core.jobs.options import GenerateOption
from app.core.jobs.spec import GENERATE_OPTIONS

__all__ = ["add_generate_flags", "generate_values"]


def add_generate_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str],
    remote: bool,
    options: Sequence[GenerateOption] = GENERATE_OPTIONS,
) -> None:
    """Add the flags of the generation options ``names``, in that order (``remote``: for
    ``ddpm remote generate``, which also has the service-only options)."""
    by_name = {o.name: o for o in options}
    for n in names:
        flag = by_name[n].flag
        if flag is None or (flag.remote_only and not remote):
            raise ValueError(f"generation option {n} has no flag for this command")
        kw: dict[str, Any] = {"dest": n, "default": flag.default}
        if flag.invert:
            kw |= {"action": "store_const", "const": False}
        elif flag.type is None:
            kw["action"] = "store_true"
        elif flag.choices is not None:
            kw |= {"type": flag.type, "choices": list(flag.choices)}
        else:
            # As argparse names it from the flag (--guidance: GUIDANCE), not from the option.
            metavar = flag.names[-1].lstrip("-").upper().replace("-", "_")
            kw |= {"type": flag.type, "metavar": metavar}
        if flag.help is not None:
            kw["help"] = flag.help
        parser.add_argument(*flag.names, **kw)


def generate_values(
    args: argparse.Namespace, options: Sequence[GenerateOption] = GENERATE_OPTIONS
) -> dict[str, Any]:
    """The parsed value of every generation option this command line has, by name."""
    return {o.name: getattr(args, o.name) for o in options if hasattr(args, o.name)}
