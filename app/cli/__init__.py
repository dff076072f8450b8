"""The ``ddpm`` command: one entry point for the service and the offline tools."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from app.cli import offline, remote, service, train
from app.cli.common import run

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm", description="DDPM image generation: a REST service and its offline tools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    offline.add_commands(sub)
    train.add_commands(sub)
    service.add_commands(sub)
    remote.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)
