"""A train worker configured for two processes (``DDPM_TRAIN_DEVICES=cpu:2``) trains under
torchrun: progress events and cancellation work as for one process, no child outlives
its job, and rank 0's checkpoint is published once."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from svc_helpers import WorkerProcess, make_client, make_settings, store_for, wait_job

pytestmark = pytest.mark.timeout(300)
ADMIN = {"Authorization": "Bearer admin-secret"}


def _options(steps: int, **kw) -> dict:
    return {
        "steps": steps, "batch_size": 4, "warmup": 1, "timesteps": 50, "default_steps": 3,
        "sample_count": 1, "measure_defaults": "off",
    } | kw  # fmt: skip


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the job id)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if text.encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


def test_two_process_training_job_reports_progress_cancels_and_publishes(e2e_redis_url, tmp_path):
    s = make_settings(e2e_redis_url, tmp_path / "data", train_devices="cpu:2")
    store = store_for(s)
    w = WorkerProcess(s, tmp_path / "train.log", queues="train", concurrency=1)
    try:
        w.wait_ready(store)
        with make_client(s) as client:
            # A long run, canceled once it has reported a few steps.
            body = {"name": "ddp", "options": _options(5000)}
            r = client.post("/train", json=body, headers=ADMIN)
            assert r.status_code == 202, r.text
            long_id = r.json()["id"]
            deadline = time.monotonic() + 120
            while (client.get(f"/jobs/{long_id}").json().get("progress") or {}).get("step", 0) < 3:
                assert time.monotonic() < deadline, (tmp_path / "train.log").read_text()[-3000:]
                time.sleep(0.1)
            assert client.post(f"/jobs/{long_id}/cancel").status_code in (200, 202)
            doc = wait_job(client, long_id, timeout=90)
            assert doc["status"] == "canceled", doc
            assert doc["error"]["message"].startswith("stopped at step")
            assert int(doc["error"]["message"].split()[-1]) < 5000
            deadline = time.monotonic() + 30
            while _processes_mentioning(long_id):  # the launcher and both ranks are gone
                assert time.monotonic() < deadline, _processes_mentioning(long_id)
                time.sleep(0.2)
            assert not list((tmp_path / "data" / "runs").glob(".launch-*"))

            # A short run goes through to a published checkpoint.
            body = {"name": "ddp", "options": _options(30, save_every=10)}
            r = client.post("/train", json=body, headers=ADMIN)
            job_id = r.json()["id"]
            doc = wait_job(client, job_id, timeout=150)
            assert doc["status"] == "succeeded", (doc, (tmp_path / "train.log").read_text()[-3000:])
            assert doc["result"]["checkpoint"] == "ddp@1"  # the canceled run published nothing
            assert doc["metrics"]["processes"] == 2
            events = store.read_events(job_id, count=10_000)
            steps = [e[2]["step"] for e in events if e[1] == "progress"]
            assert steps and steps[-1] == 30 and steps == sorted(steps)
            last = [e[2] for e in events if e[1] == "progress"][-1]
            assert last["loss"] > 0 and last["images_per_sec"] > 0
            meta = client.get("/checkpoints/ddp").json()["versions"][-1]["meta"]
            assert meta["processes"] == 2 and meta["training_steps"] == 30
            assert meta["job_id"] == job_id
    finally:
        w.stop()
