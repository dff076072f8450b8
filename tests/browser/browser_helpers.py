"""Helpers of the browser tests (no fixtures here): live services and page pixels."""

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

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(data: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    env |= {
        "DDPM_DATA_DIR": str(data),
        "DDPM_REDIS_URL": redis_url,
        "DDPM_KEY_PREFIX": f"browser-{uuid.uuid4().hex[:8]}:",
        "DDPM_DEVICE": "cpu",
        "DDPM_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


class Service:
    """A process tree (``ddpm serve`` or ``ddpm api``) on a free port."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, ready: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *argv, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=self.base, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.http.get(ready).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(log.read_text()[-4000:])
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # serve stops its children
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.http.close()
        self._out.close()


def save_screenshot(target, path: Path, **kw) -> Path:
    """A screenshot of a page or an element (locator) as a 256-colour PNG (small enough
    to commit)."""
    from PIL import Image

    img = Image.open(io.BytesIO(target.screenshot(**kw))).convert("RGB")
    img.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def page_pixels(page, selector: str) -> np.ndarray:
    """The pixels of a loaded <img> on the page as the browser decoded them, (H, W, 4)."""
    page.wait_for_function(
        """(sel) => {
          const i = document.querySelector(sel);
          return i && i.complete && i.naturalWidth > 0;
        }""",
        arg=selector,
    )
    data = page.evaluate(
        """(sel) => {
          const img = document.querySelector(sel);
          const c = document.createElement('canvas');
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const ctx = c.getContext('2d');
          ctx.drawImage(img, 0, 0);
          const px = ctx.getImageData(0, 0, c.width, c.height).data;
          return {w: c.width, h: c.height, px: Array.from(px)};
        }""",
        selector,
    )
    return np.array(data["px"], dtype=np.uint8).reshape(data["h"], data["w"], 4)


def assert_same_image(pixels: np.ndarray, png: bytes) -> None:
    """The page's pixels equal the PNG's (a grayscale PNG shows as R = G = B, opaque)."""
    from PIL import Image

    ref = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    assert pixels.shape == ref.shape, (pixels.shape, ref.shape)
    assert np.array_equal(pixels, ref), f"{int((pixels != ref).any(-1).sum())} pixels differ"
