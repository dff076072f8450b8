"""The compose stack in real containers: redis, api, worker-gen, worker-train and flower from
the images the shipped Dockerfiles build, run as the compose files say (see stack.py).

The tests run in file order against one stack; the faults come last, each scheduled on an
observed event (a job's progress), never on a sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from .conftest import FIGURES
from .engine import Engine
from .stack import REDIS_PORT, Stack

pytestmark = pytest.mark.timeout(900)

SERVICES = ["redis", "api", "worker-gen", "worker-train", "flower"]
NON_ROOT = {"api", "worker-gen", "worker-train", "flower"}  # the images' USER 10001
TERMINAL = {"succeeded", "failed", "canceled"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def stack(engine: Engine, images: dict[str, str], project: dict[str, Any]) -> Iterator[Stack]:
    redis_port, api_port, flower_port = _free_ports(3)
    st = Stack(
        engine,
        project,
        name=f"ddpmct{int(time.time())}",
        ports={REDIS_PORT: redis_port, 8000: api_port, 5555: flower_port},
        services=[s for s in SERVICES if s in project["services"]],
    )
    t0 = time.monotonic()
    try:
        st.up()
        took = st.wait_healthy(st.services, timeout=240)
        FIGURES.append(
            f"stack: every container healthy {time.monotonic() - t0:.0f} s after the first "
            f"started ({', '.join(f'{s} {t:.0f} s' for s, t in took.items())} after the last)"
        )
        yield st
    finally:
        st.down()


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.ports[8000]}", timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def admin(stack: Stack) -> dict[str, str]:
    """The token the API generated into the data volume (DDPM_ADMIN_TOKEN is empty)."""
    token = stack.exec("api", "cat", "/data/admin_token").strip()
    assert token
    return {"Authorization": f"Bearer {token}"}


def _submit(api: httpx.Client, body: dict[str, Any]) -> str:
    r = api.post("/generate", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _wait(api: httpx.Client, job: str, timeout: float, until: Any = None) -> dict[str, Any]:
    """Poll until ``until(doc)`` (default: a terminal status)."""
    until = until or (lambda d: d["status"] in TERMINAL)
    deadline = time.monotonic() + timeout
    while True:
        r = api.get(f"/jobs/{job}")
        if r.status_code == 200:
            doc = r.json()
            if until(doc):
                return doc
        assert time.monotonic() < deadline, f"job {job}: {r.status_code} {r.text[:1500]}"
        time.sleep(0.2)


def _progressed(step: int) -> Any:
    return lambda d: d["status"] in TERMINAL or (d.get("progress") or {}).get("step", 0) >= step


def _events(api: httpx.Client, job: str) -> list[tuple[str, dict[str, Any]]]:
    """The job's whole Server-Sent Events stream (it ends after ``done``)."""
    import json

    r = api.get(f"/jobs/{job}/events", timeout=30)
    assert r.status_code == 200, r.text
    out, name = [], "message"
    for line in r.text.splitlines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            out.append((name, json.loads(line.split(":", 1)[1])))
            name = "message"
    return out


def _images(api: httpx.Client, doc: dict[str, Any]) -> list[np.ndarray]:
    import io

    from PIL import Image

    out = []
    for img in doc["result"]["images"]:
        r = api.get(img["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        out.append(np.asarray(Image.open(io.BytesIO(r.content))))
    return out


def _ddpm_sample(tmp: Path, checkpoint: str, n: int, seed: int, steps: int, precision: str,
                 env: dict[str, str] | None = None) -> list[np.ndarray]:  # fmt: skip
    """``ddpm sample`` on this machine, at the precision the worker chose."""
    from PIL import Image

    out = tmp / "sample"
    autocast = "bf16" if precision == "bf16" else "none"
    cmd = [str(Path(sys.executable).parent / "ddpm"), "sample", checkpoint, "-n", str(n),
           "--seed", str(seed), "--steps", str(steps), "--autocast", autocast,
           "--no-progress", "-o", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return [np.asarray(Image.open(p)) for p in sorted(out.glob("*_seed*.png"))]


# -- the stack as deployed ---------------------------------------------------------------------
def test_every_container_is_healthy_and_runs_as_its_images_user(stack: Stack) -> None:
    for service in stack.services:
        assert stack.health(service) == "healthy", service
        status = Path(f"/proc/{stack.pid(service)}/status").read_text()
        uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
        if service in NON_ROOT:
            assert uid == 10001, (service, uid)
        else:
            assert uid != 0, (service, uid)
        spec = stack.containers[service].spec
        assert stack.inspect(service)["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert spec["HostConfig"]["NetworkMode"] == "host"


def test_redis_refuses_a_client_without_the_password(stack: Stack, compose_env) -> None:
    port = stack.ports[REDIS_PORT]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="wrong", socket_timeout=5).ping()
    assert redis.Redis(port=port, password=compose_env["DDPM_REDIS_PASSWORD"]).ping()


def test_generate_in_the_container_gives_ddpm_sample_s_images(
    stack: Stack, api: httpx.Client, tmp_path: Path
) -> None:
    job = _submit(api, {"count": 4, "seed": 11, "steps": 10, "checkpoint": "digits"})
    doc = _wait(api, job, 120)
    assert doc["status"] == "succeeded", doc
    served = _images(api, doc)
    local = _ddpm_sample(tmp_path, "digits", 4, 11, 10, doc["metrics"]["precision"])
    assert len(served) == len(local) == 4
    for a, b in zip(served, local, strict=True):
        assert np.array_equal(a, b)


def test_flower_sees_both_workers(stack: Stack, compose_env) -> None:
    user, password = compose_env["FLOWER_BASIC_AUTH"].split(":", 1)
    url = f"http://127.0.0.1:{stack.ports[5555]}/api/workers"
    assert httpx.get(url, timeout=10).status_code == 401
    deadline = time.monotonic() + 60
    while True:
        r = httpx.get(url, auth=(user, password), params={"refresh": "1"}, timeout=30)
        assert r.status_code == 200, r.text
        names = {n.split("@")[0] for n in r.json()}
        if {"gen", "train"} <= names:
            break
        assert time.monotonic() < deadline, names
        time.sleep(1)


def test_train_in_its_container_then_served_by_the_gen_container(
    stack: Stack, api: httpx.Client, admin: dict[str, str]
) -> None:
    started = stack.inspect("worker-gen")["State"]["StartedAt"]
    options = {"preset": "tiny", "steps": 3, "batch_size": 8, "warmup": 1, "timesteps": 50,
               "default_steps": 5, "sample_count": 4, "measure_defaults": "off"}  # fmt: skip
    r = api.post("/train", json={"name": "ct-tiny", "options": options}, headers=admin)
    assert r.status_code == 202, r.text
    doc = _wait(api, r.json()["id"], 240)
    assert doc["status"] == "succeeded", (doc, stack.logs("worker-train")[-3000:])
    r = api.get("/checkpoints/ct-tiny")
    assert r.status_code == 200 and r.json()["latest"] == "1", r.text
    job = _submit(api, {"count": 2, "seed": 3, "steps": 5, "checkpoint": "ct-tiny@1"})
    doc = _wait(api, job, 120)
    assert doc["status"] == "succeeded", (doc, stack.logs("worker-gen")[-3000:])
    assert doc["request"]["checkpoint"] == "ct-tiny@1", doc["request"]
    assert stack.inspect("worker-gen")["State"]["StartedAt"] == started  # no restart


# -- faults ------------------------------------------------------------------------------------
def test_gen_container_killed_mid_job_is_restarted_and_the_job_succeeds_once(
    stack: Stack, api: httpx.Client
) -> None:
    """A crash, as the OOM killer makes one: SIGKILL of the container's process. (``docker
    kill`` itself counts as a manual stop, after which ``unless-stopped`` does not restart;
    that is Docker's rule, not ours.)"""
    restarts = stack.inspect("worker-gen")["RestartCount"]
    job = _submit(api, {"count": 4, "seed": 21, "steps": 400, "sampler": "ddpm"})
    doc = _wait(api, job, 120, _progressed(10))
    assert doc["status"] == "running", doc
    os.kill(stack.pid("worker-gen"), signal.SIGKILL)
    doc = _wait(api, job, 420)
    assert doc["status"] == "succeeded", (doc, stack.logs("worker-gen")[-3000:])
    assert doc["attempts"] == 2, doc  # the killed run, then the one that finished
    assert stack.inspect("worker-gen")["RestartCount"] == restarts + 1
    # Exactly one outcome: one finish event in the job's stream.
    events = _events(api, job)
    assert [e for e, _ in events].count("done") == 1, events
    statuses = [d.get("status") for e, d in events if e == "status"]
    assert statuses.count("succeeded") == 1 and statuses.count("running") == 2, statuses


def test_docker_restart_of_redis_loses_nothing_accepted(stack: Stack, api: httpx.Client) -> None:
    stack.wait_healthy(["worker-gen"], timeout=180)
    jobs = [_submit(api, {"count": 1, "seed": 100 + i, "steps": 20}) for i in range(6)]
    stack.engine.docker("restart", stack.containers["redis"].name)
    stack.wait_healthy(["redis"], timeout=60)
    docs = [_wait(api, j, 300) for j in jobs]
    assert [d["status"] for d in docs] == ["succeeded"] * 6, docs


def test_docker_stop_of_the_gen_worker_finishes_its_job(stack: Stack, api: httpx.Client) -> None:
    stack.wait_healthy(["worker-gen"], timeout=180)
    grace = stack.containers["worker-gen"].spec["StopTimeout"]
    job = _submit(api, {"count": 4, "seed": 31, "steps": 150, "sampler": "ddpm"})
    _wait(api, job, 120, _progressed(10))
    t0 = time.monotonic()
    stopper = threading.Thread(
        target=stack.engine.docker,
        args=("stop", stack.containers["worker-gen"].name),
        kwargs={"timeout": grace + 60},
    )
    stopper.start()
    doc = _wait(api, job, grace)
    stopper.join(grace + 60)
    took = time.monotonic() - t0
    assert doc["status"] == "succeeded" and doc["attempts"] == 1, doc
    state = stack.inspect("worker-gen")["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0, (state, took)
    assert took < grace
    FIGURES.append(f"docker stop of worker-gen mid-job: job finished, exited 0 in {took:.0f} s")
    stack.engine.docker("start", stack.containers["worker-gen"].name)
