"""A job its worker holds while the engine is busy with others: the document says it
waits (``progress.waiting``), and the wait is reported apart from the run time."""

from __future__ import annotations

import time

import pytest
from svc_helpers import WorkerProcess, make_client, make_settings, store_for, submit, wait_job

pytestmark = pytest.mark.timeout(180)


def test_waiting_for_the_engine_is_shown_and_timed_apart(redis_url, data_dir, tmp_path):
    # Two rows per call, at most: a second 2-image job of the same length waits until the
    # first has finished (least remaining work goes first).
    s = make_settings(redis_url, data_dir, max_batch=2, knee_fraction=0.0)
    worker = WorkerProcess(s, tmp_path / "worker.log", queues="gen", concurrency=4)
    try:
        worker.wait_ready(store_for(s))
        with make_client(s) as client:
            body = {"count": 2, "steps": 1000, "sampler": "ddpm"}
            first = submit(client, body | {"seed": 1})
            deadline = time.monotonic() + 60
            while client.get(f"/jobs/{first['id']}").json()["progress"]["step"] < 5:
                assert time.monotonic() < deadline, "the first job never progressed"
                time.sleep(0.05)
            second = submit(client, body | {"seed": 3})
            seen: list[dict] = []
            while True:  # until the second job computes
                doc = client.get(f"/jobs/{second['id']}").json()
                if doc["status"] == "running" and doc["progress"]["waiting"]:
                    seen.append(doc)
                if doc["progress"]["step"] > 0 or doc["status"] not in ("queued", "running"):
                    break
                assert time.monotonic() < deadline + 60, doc
                time.sleep(0.05)
            assert seen, "the second job was never reported waiting"
            waiting = seen[-1]
            assert waiting["queue_position"] is None and waiting["eta_seconds"] is None
            assert waiting["progress"]["step"] == 0 and waiting["progress"]["total"] == 1000
            assert waiting["metrics"]["wait_seconds"] > 0
            assert waiting["metrics"]["run_seconds"] == 0
            done = wait_job(client, second["id"], timeout=120)
            first_done = wait_job(client, first["id"], timeout=10)
    finally:
        worker.stop()
    assert done["status"] == "succeeded" and not done["progress"]["waiting"]
    m = done["metrics"]
    # Waited about as long as the document said while waiting, or longer: the document
    # says "waiting" until the monitor's next tick after the first step (0.05 s here,
    # later on a loaded machine).
    assert m["wait_seconds"] >= waiting["metrics"]["wait_seconds"] - 0.5
    assert m["wait_seconds"] > 1.0  # the first job's remaining ~1000 steps
    started = first_done["metrics"]
    assert started["wait_seconds"] < m["wait_seconds"]
    total = _ts(done["finished_at"]) - _ts(done["started_at"])
    assert m["wait_seconds"] + m["run_seconds"] == pytest.approx(total, abs=0.5)
    assert m["run_seconds"] > 0


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
