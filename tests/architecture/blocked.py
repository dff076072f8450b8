"""Run a module with some top-level packages made unimportable:

    python tests/architecture/blocked.py fastapi,starlette,uvicorn -m celery -A ... worker

as a process would run in an image that does not install them (the worker image has no
web framework; the client needs httpx alone). An import of a blocked package raises
ImportError naming it and this helper."""

from __future__ import annotations

import importlib.abc
import runpy
import sys


class Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.split(".")[0] in self.names or fullname in self.names:
            raise ImportError(f"{fullname} is blocked here (tests/architecture/blocked.py)")
        return None


def block(names: str) -> None:
    """Make the comma-separated packages (or dotted modules) unimportable."""
    wanted = {n for n in names.split(",") if n}
    for loaded in list(sys.modules):
        if loaded.split(".")[0] in wanted or loaded in wanted:
            raise RuntimeError(f"{loaded} was imported before it could be blocked")
    sys.meta_path.insert(0, Blocker(wanted))


if __name__ == "__main__":
    block(sys.argv[1])
    if sys.argv[2] == "-m":
        sys.argv = [sys.argv[3], *sys.argv[4:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")
