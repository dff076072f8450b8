"""The package picture of docs/ARCHITECTURE.md, enforced.

``ddpm_core`` <- ``app.core`` <- {``app.api``, ``worker``} <- ``app.cli``; ``app.client``
stands alone. The contracts live in pyproject.toml (``[tool.importlinter]``) and are
checked statically (every import, also inside functions); cycles between modules are
refused; and the worker's and the client's modules are imported, for real, where the
packages they must not need cannot be imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = Path(__file__).with_name("blocked.py")
PACKAGES = ("app", "worker", "ddpm_core")

pytestmark = pytest.mark.timeout(120)


def test_import_contracts_hold() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run(
        [str(exe), "pyproject.toml", "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout, r.stdout[-2000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles_between_modules() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.modules) > 50  # the whole tree was read
    assert _cycles(graph) == []


_IMPORT_ALL = """
import importlib, pkgutil, sys
roots = sys.argv[1].split(",")
for root in roots:
    pkg = importlib.import_module(root)
    for m in pkgutil.walk_packages(pkg.__path__, prefix=root + "."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
print("imported", len(sys.modules))
"""


def _import_all(tmp_path: Path, blocked: str, roots: str) -> subprocess.CompletedProcess[str]:
    """Every module under ``roots`` imported where ``blocked`` cannot be."""
    script = tmp_path / "import_all.py"
    script.write_text(_IMPORT_ALL)
    return subprocess.run(
        [sys.executable, str(BLOCKED), blocked, str(script), roots],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )


def test_worker_and_job_system_import_without_a_web_framework(tmp_path: Path) -> None:
    r = _import_all(tmp_path, "fastapi,starlette,uvicorn", "worker,app.core")
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-3000:]


def test_the_blocker_really_blocks(tmp_path: Path) -> None:
    """The check above could pass vacuously if blocking did nothing."""
    r = _import_all(tmp_path, "fastapi", "app.api")
    assert r.returncode != 0 and "fastapi is blocked here" in r.stderr, r.stderr[-2000:]


def test_client_imports_with_httpx_alone(tmp_path: Path) -> None:
    """Every module of app.client, where the service's packages and the rest of the
    project cannot be imported (tests/client/test_httpx_alone.py runs a job so)."""
    blocked = (
        "torch,numpy,fastapi,starlette,uvicorn,celery,kombu,redis,pydantic,"
        "app.core,app.api,app.cli,worker,ddpm_core"
    )
    r = _import_all(tmp_path, blocked, "app.client")
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-3000:]
