"""The container suite's shared parts: one engine, the local bases, the project's images.

Without a Docker engine (no dockerd, not root) the suite skips with the reason; in CI
(``CI`` set) that is a failure. Run it alone with ``.venv/bin/python -m pytest
tests/containers``. Figures (build times, image sizes, time to healthy) are printed at the
end of the run.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.compose import ROOT, load

from .bases import Bases
from .engine import Engine, EngineUnavailable, cache_dir

COMPOSE_FILES = ("docker-compose.yml", "docker/compose.cpu.yml")
PROFILES = {"monitoring"}  # Flower comes up too; the multigpu worker has no GPUs here
# Which local base each shipped Dockerfile is built on (its BASE_IMAGE build argument).
DOCKERFILE_BASE = {"docker/Dockerfile.api": "python", "docker/Dockerfile.worker": "torch"}
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("container figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    e = Engine(cache_dir())
    try:
        t0 = time.monotonic()
        e.start()
        FIGURES.append(f"engine: dockerd started in {time.monotonic() - t0:.1f} s")
    except EngineUnavailable as err:
        if os.environ.get("CI"):
            pytest.fail(f"the container tests must run in CI: {err}")
        pytest.skip(str(err))
    try:
        yield e
    finally:
        # Layers of earlier builds that no tag names any more; the cache keeps the rest.
        e.docker("image", "prune", "-f", check=False, timeout=300)
        e.stop()


@pytest.fixture(scope="session")
def compose_env() -> dict[str, str]:
    """What a user's .env gives compose: a Redis password, Flower's basic auth."""
    return {
        "DDPM_REDIS_PASSWORD": secrets.token_urlsafe(16),
        "FLOWER_BASIC_AUTH": f"ddpm:{secrets.token_urlsafe(12)}",
        "DDPM_IMAGE_TAG": "containers-test",
    }


@pytest.fixture(scope="session")
def project(compose_env: dict[str, str]) -> dict[str, Any]:
    """The merged compose project with the profiles this suite runs."""
    proj = load(*COMPOSE_FILES, env=compose_env)
    proj["services"] = {
        name: spec
        for name, spec in proj["services"].items()
        if not spec.get("profiles") or PROFILES & set(spec["profiles"])
    }
    return proj


@pytest.fixture(scope="session")
def images(engine: Engine, project: dict[str, Any]) -> dict[str, str]:
    """Build every service's image from its shipped Dockerfile (on the local bases)."""
    redis_tags = [s["image"] for s in project["services"].values() if "build" not in s]
    bases = Bases(engine)
    bases.ensure(redis_tags)
    for tag, took in bases.built.items():
        FIGURES.append(f"base {tag}: built in {took:.0f} s")
    built: dict[str, str] = {}
    for spec in project["services"].values():
        if "build" not in spec or spec["image"] in built:
            continue
        dockerfile = spec["build"]["dockerfile"]
        base = getattr(bases, DOCKERFILE_BASE[dockerfile])
        t0 = time.monotonic()
        engine.docker(
            "build", "--network", "host", "-f", str(ROOT / dockerfile),
            "--build-arg", f"BASE_IMAGE={base}", "-t", spec["image"],
            str(ROOT / spec["build"]["context"]),
            timeout=1200,
        )  # fmt: skip
        took = time.monotonic() - t0
        size, base_size = (
            int(engine.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6
            for tag in (spec["image"], base)
        )
        FIGURES.append(
            f"{dockerfile}: built in {took:.0f} s (from the layer cache where nothing it "
            f"copies changed), {spec['image']} {size:.0f} MB, {size - base_size:.0f} MB over "
            f"its base {base}"
        )
        built[spec["image"]] = dockerfile
    return built
