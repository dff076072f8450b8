"""The ``ddpm`` command: one entry point for the service and the offline tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ddpm_core import cli as core_cli
from ddpm_core import train_cli

from . import remote_cli, service_cli

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm", description="DDPM image generation: a REST service and its offline tools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core_cli.add_commands(sub)
    train_cli.add_commands(sub)
    service_cli.add_commands(sub)
    remote_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return core_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
