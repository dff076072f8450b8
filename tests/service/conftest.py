"""Fixtures of the service tests: a real Redis, a real Celery worker, tiny checkpoints.

Redis: the session's server of tests/conftest.py. Every session uses its own
key prefix (jobs, Celery's queues and bookkeeping alike), so concurrent sessions
on one Redis do not see each other; ``isolated`` gives a test a prefix of its own.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from svc_helpers import (  # noqa: E402
    WorkerProcess,
    make_client,
    make_settings,
    make_tiny_checkpoint,
    store_for,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """One intra-op thread in this process (OpenMP's setting is per thread: the engine
    thread sets its own). A small shared machine otherwise loses most time spinning."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATA_DIR with checkpoints ``tiny`` (unconditional) and ``tinycond`` (10 classes)."""
    from app.core.checkpoints.registry import Registry

    d = tmp_path_factory.mktemp("data")
    src = tmp_path_factory.mktemp("src")
    reg = Registry(d)
    reg.publish(make_tiny_checkpoint(src / "tiny", seed=0), "tiny")
    reg.publish(make_tiny_checkpoint(src / "tinycond", num_classes=10, seed=1), "tinycond")
    return d


@pytest.fixture(scope="session")
def settings(redis_url: str, data_dir: Path):
    return make_settings(redis_url, data_dir)


@pytest.fixture(scope="session")
def worker(settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The session's generation + training worker (a real Celery process)."""
    w = WorkerProcess(settings, tmp_path_factory.mktemp("logs") / "worker.log")
    try:
        w.wait_ready(store_for(settings))
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="session")
def client(settings, worker):
    """A TestClient of the API, backed by the session worker."""
    with make_client(settings) as c:
        yield c


@pytest.fixture
def isolated(redis_url: str, data_dir: Path):
    """(settings, client) on a key prefix of its own, with no worker listening."""

    def build(**over):
        s = make_settings(over.pop("redis_url", redis_url), data_dir, **over)
        return s, make_client(s)

    return build


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny random checkpoints for engine tests: unconditional, class-conditional, and
    class-conditional with v-prediction."""
    d = tmp_path_factory.mktemp("ck")
    return {
        "u": str(make_tiny_checkpoint(d / "u")),
        "c": str(make_tiny_checkpoint(d / "c", num_classes=10, seed=1)),
        "v": str(
            make_tiny_checkpoint(d / "v", num_classes=10, seed=2, prediction_type="v_prediction")
        ),
    }
