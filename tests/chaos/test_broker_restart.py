"""A gen worker with jobs in flight rides out a Redis SIGKILL and restart.

Without the patch in app/core/queue/kombu_patches.py (kombu's Redis channel closed after Celery's
``collect()`` detached its transport) the worker stops with "Unrecoverable error"; the
unpatched run shows the test can tell."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scenario import Cluster  # noqa: E402

UNPATCHED = (
    "import kombu.transport.redis as k, worker.celery_app, sys\n"
    "k.Channel._connparams = k.Channel._connparams.__wrapped__\n"
    "from app.cli import main\n"
    "sys.exit(main(['worker', '--queue', 'gen']))\n"
)


def _restart_redis_under_load(c: Cluster) -> bool:
    """Jobs in flight, Redis SIGKILLed and restarted; True when the gen worker survived."""
    ids = [c.submit({"count": 2, "seed": i, "steps": 300, "sampler": "ddpm"}) for i in range(6)]
    c.wait_any_running(ids)
    c.kill("redis")
    time.sleep(1.0)
    c.start_redis()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and c.procs["gen"].poll() is None:
        if "Unrecoverable error" in c.tail("gen"):
            return False  # it is shutting down
        time.sleep(0.5)
    return c.procs["gen"].poll() is None and "Unrecoverable error" not in c.tail("gen")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("patched", [True, False])
def test_gen_worker_survives_a_redis_restart(tmp_path, patched):
    c = Cluster(tmp_path)
    try:
        c.start_redis()
        c.start("api")
        if patched:
            c.start("gen")
        else:
            c._spawn("gen", [sys.executable, "-c", UNPATCHED])
        c.wait_ready()
        survived = _restart_redis_under_load(c)
        if not patched:
            assert not survived
            c.kill("gen")  # it would wait for its jobs before exiting
            return
        assert survived, c.tail("gen")
        c.wait_ready(60)  # consuming again
        job = c.submit({"count": 1, "seed": 1, "steps": 5})
        deadline = time.monotonic() + 120
        while c.doc(job)["status"] != "succeeded":
            assert time.monotonic() < deadline, c.tail("gen")
            time.sleep(0.3)
    finally:
        c.down()
