"""A train worker SIGKILLed mid-run: a new train worker re-enqueues the job, which resumes
from its last saved state and publishes a checkpoint."""

from __future__ import annotations

import time

from svc_helpers import WorkerProcess, make_client, make_settings, store_for, wait_job


def test_training_resumes_after_worker_death(e2e_redis_url, tmp_path):
    s = make_settings(e2e_redis_url, tmp_path / "data", lease_ttl=15.0)  # the shipped lease
    store = store_for(s)
    first = WorkerProcess(s, tmp_path / "t1.log", queues="train", concurrency=1)
    second = None
    try:
        first.wait_ready(store)
        with make_client(s) as client:
            body = {
                "name": "resumed",
                "options": {"steps": 400, "batch_size": 4, "warmup": 1, "timesteps": 50,
                            "default_steps": 3, "sample_count": 1, "save_every": 50,
                            "measure_defaults": "off"},
            }  # fmt: skip
            r = client.post("/train", json=body, headers={"Authorization": "Bearer admin-secret"})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            # Kill well after the save at step 50 and before the next one at step 100 (a kill
            # during a save may lose the state, and the run then restarts from step 0).
            state = tmp_path / "data" / "runs" / job_id / "train_state" / "state.json"
            deadline = time.monotonic() + 120
            while not (
                state.exists() and client.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 60
            ):
                assert time.monotonic() < deadline, (tmp_path / "t1.log").read_text()[-3000:]
                time.sleep(0.05)
            first.kill()
            second = WorkerProcess(s, tmp_path / "t2.log", queues="train", concurrency=1)
            second.wait_ready(store)
            doc = wait_job(client, job_id, timeout=240)
            assert doc["status"] == "succeeded", (doc, (tmp_path / "t2.log").read_text()[-3000:])
            assert doc["result"]["checkpoint"] == "resumed@1"
            assert doc["attempts"] >= 2
            assert doc["metrics"]["resumed"] is True  # from its saved state
            info = client.get("/checkpoints/resumed").json()
            assert info["versions"][0]["meta"]["training_steps"] == 400
    finally:
        first.stop()
        if second is not None:
            second.stop()
