"""A whole ``ddpm serve`` (embedded Redis, API, gen and train workers) for a test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from svc_helpers import ROOT, make_tiny_checkpoint

__all__ = ["serving"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(
    tmp_path: Path, **extra_env: str
) -> Iterator[tuple[httpx.Client, Path, subprocess.Popen, Path]]:
    """``ddpm serve`` on a free port with the tiny test checkpoint as the default:
    (client, data dir, process, log path); stopped with SIGTERM afterwards."""
    from app.core.checkpoints.registry import Registry

    data = tmp_path / "data"
    Registry(data).publish(make_tiny_checkpoint(tmp_path / "src"), "tiny")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DDPM_", "OTEL_"))}
    env |= {
        "DDPM_DATA_DIR": str(data),
        "DDPM_DEFAULT_CHECKPOINT": "tiny",
        "DDPM_DEVICE": "cpu",
        "DDPM_TORCH_THREADS": "1",
        "DDPM_GEN_CONCURRENCY": "4",
        "DDPM_PROGRESS_INTERVAL": "0.1",
        "OMP_NUM_THREADS": "1",
    } | extra_env
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--concurrency", "4"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text()[-4000:])
            time.sleep(0.3)
        yield client, data, proc, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # serve stops its children
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        client.close()
        log.close()
