"""A gen worker SIGKILLed mid-job: with the shipped lease and visibility timeout, the reaper
of the restarted worker re-queues the job within the lease period and it succeeds."""

from __future__ import annotations

import time

from svc_helpers import (
    WorkerProcess,
    decode_png,
    make_settings,
    make_tiny_checkpoint,
    store_for,
    submit,
    wait_job,
)


def test_worker_killed_mid_job_is_redelivered(e2e_redis_url, tmp_path):
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.core.checkpoints.registry import Registry

    data = tmp_path / "data"
    Registry(data).publish(make_tiny_checkpoint(tmp_path / "src"), "tiny")
    from app.core.settings import Settings

    shipped = Settings.model_fields
    s = make_settings(
        e2e_redis_url,
        data,
        visibility_timeout=shipped["visibility_timeout"].default,
        lease_ttl=shipped["lease_ttl"].default,
        restore_interval=None,
    )
    store = store_for(s)
    first = WorkerProcess(s, tmp_path / "w1.log", queues="gen", concurrency=4)
    second = None
    try:
        first.wait_ready(store)
        with TestClient(create_app(s)) as client:
            job = submit(client, {"count": 8, "seed": 5, "steps": 1000, "sampler": "ddpm"})
            deadline = time.monotonic() + 60
            while client.get(f"/jobs/{job['id']}").json()["progress"]["step"] < 20:
                assert time.monotonic() < deadline, "job never progressed"
                time.sleep(0.05)
            first.kill()
            assert client.get(f"/jobs/{job['id']}").json()["status"] == "running"
            killed = time.monotonic()
            second = WorkerProcess(s, tmp_path / "w2.log", queues="gen", concurrency=4)
            second.wait_ready(store)
            running_again = wait_job(client, job["id"], 60, {"running", "succeeded"})
            while running_again["attempts"] < 2:
                assert time.monotonic() - killed < 60, running_again
                time.sleep(0.2)
                running_again = client.get(f"/jobs/{job['id']}").json()
            doc = wait_job(client, job["id"], timeout=240)
            assert doc["status"] == "succeeded", (doc, (tmp_path / "w2.log").read_text()[-3000:])
            assert doc["attempts"] >= 2
            assert doc["metrics"]["worker"].startswith(second.name)
            assert len(doc["result"]["images"]) == 8
            png = client.get(doc["result"]["images"][7]["url"]).content
            assert decode_png(png).shape == (16, 16)
    finally:
        first.stop()
        if second is not None:
            second.stop()
