"""``ddpm serve`` end to end: embedded Redis, API, gen and train workers as children."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time

import httpx
import pytest
from serve_helpers import serving
from svc_helpers import decode_png, wait_job


@pytest.fixture
def served(tmp_path):
    with serving(tmp_path) as svc:
        yield svc


def test_serve_generate_train_and_stop(served):
    client, data, proc, log = served
    token_file = data / "admin_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert (data / "redis" / "appendonlydir").exists() or (data / "redis").is_dir()

    r = client.post("/generate", json={"count": 4, "seed": 1, "steps": 10})
    assert r.status_code == 202, r.text
    doc = wait_job(client, r.json()["id"], timeout=120)
    assert doc["status"] == "succeeded", doc
    for img in doc["result"]["images"]:
        assert decode_png(client.get(img["url"]).content).shape == (16, 16)
    # Structured log lines name the job (API and worker alike).
    assert log.read_text().count(f"job_id={doc['id']}") >= 3

    # Training through the admin API publishes a new checkpoint version.
    token = token_file.read_text().strip()
    body = {
        "name": "digits-e2e",
        "options": {
            "steps": 3,
            "batch_size": 8,
            "warmup": 1,
            "timesteps": 50,
            "default_steps": 5,
            "sample_count": 4,
            "measure_images": 4,  # the measured defaults, on their smallest budget
        },
    }
    assert client.post("/train", json=body).status_code == 401
    r = client.post("/train", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "train"
    tdoc = wait_job(client, r.json()["id"], timeout=180)
    assert tdoc["status"] == "succeeded", tdoc
    assert tdoc["result"]["checkpoint"] == "digits-e2e@1"
    info = client.get("/checkpoints/digits-e2e").json()
    meta = info["versions"][0]["meta"]
    assert info["latest"] == "1" and meta["training_steps"] == 3
    chosen = meta["sampling_defaults"]["chosen"]  # measured at the end of POST /train too
    assert info["versions"][0]["config"]["default_sampler"] == chosen["sampler"]
    r = client.post("/generate", json={"checkpoint": "digits-e2e", "count": 1, "steps": 5})
    assert wait_job(client, r.json()["id"], timeout=120)["status"] == "succeeded"

    # SIGTERM stops every child and the embedded Redis.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    with pytest.raises(httpx.TransportError):
        client.get("/healthz", timeout=2)
    assert not (data / "redis" / "url").exists()


def _child_pids(parent: int) -> dict[str, int]:
    """The children of ``ddpm serve`` by role (gen/train worker, api, redis)."""
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True, text=True
    ).stdout
    roles = {}
    for line in out.splitlines():
        pid, args = line.strip().split(" ", 1)
        for role, mark in (("gen", "-Q gen"), ("train", "-Q train"), ("api", "uvicorn")):
            if mark in args:
                roles[role] = int(pid)
        if "redis-server" in args:
            roles["redis"] = int(pid)
    return roles


def test_serve_restarts_dead_children_and_secures_redis(served):
    """A SIGKILLed worker or Redis is restarted by `ddpm serve`, which keeps serving; the
    embedded Redis binds loopback, needs its password and refuses CONFIG."""
    import redis

    client, data, proc, log = served
    secret = data / "redis_password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    url = (data / "redis" / "url").read_text().strip()
    assert url.startswith("redis://127.0.0.1:") and "@" not in url
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url).ping()
    r = redis.Redis.from_url(url, password=secret.read_text().strip())
    assert r.ping()
    with pytest.raises(redis.ResponseError):
        r.config_set("dir", "/tmp")

    pids = _child_pids(proc.pid)
    os.kill(pids["gen"], signal.SIGKILL)
    deadline = time.monotonic() + 90
    while (new := _child_pids(proc.pid).get("gen")) in (None, pids["gen"]):
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    os.kill(pids["redis"], signal.SIGKILL)
    r = client.post("/generate", json={"count": 2, "seed": 5, "steps": 5})
    while r.status_code == 503:  # the store is restarting
        assert time.monotonic() < deadline, r.text
        time.sleep(0.5)
        r = client.post("/generate", json={"count": 2, "seed": 5, "steps": 5})
    assert r.status_code == 202, r.text
    doc = wait_job(client, r.json()["id"], timeout=120)
    assert doc["status"] == "succeeded", (doc, log.read_text()[-3000:])
    assert "gen exited with code -9; restarting" in log.read_text()
    assert _child_pids(proc.pid)["gen"] == new and proc.poll() is None
