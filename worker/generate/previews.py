"""Live previews, worker side: the latest x0 estimate of a watched job as a small PNG grid.

The engine thread hands over the estimate as uint8 pixels (:meth:`PreviewPublisher.offer`
converts a few rows and swaps a reference); the job's own thread encodes and stores it
as the result file ``preview.png`` of its attempt and queues a ``preview`` event, which
the monitor writes at its next tick, fenced by the attempt like progress (see
app/core/jobs/previews.py).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from app.core.jobs.previews import PREVIEW_NAME, preview_event
from app.core.logs import log_event
from app.core.storage.results import ResultStore
from ddpm_core.images import Pixels
from worker.monitor import Held

__all__ = ["PreviewPublisher", "preview_png", "PREVIEW_MAX_SIDE"]

log = logging.getLogger("ddpm.worker")

PREVIEW_MAX_SIDE = 384  # pixels: a preview is a glance, not a result


def preview_png(x0: Pixels, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """(B, C, H, W) in [-1, 1] or (B, H, W, C) pixels as one PNG grid, shrunk to at most
    ``max_side`` pixels."""
    from PIL import Image

    from ddpm_core.images import make_grid, png_bytes, to_pil

    img = to_pil(make_grid(x0))
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return png_bytes(img)


class PreviewPublisher:
    """Stores a job's latest preview grid and announces it with a ``preview`` event."""

    def __init__(self, results: ResultStore, job_id: str, attempt: int, held: Held) -> None:
        self.results = results
        self.job_id = job_id
        self.attempt = attempt
        self.held = held
        self._latest: tuple[int, int, np.ndarray] | None = None
        self.published = 0
        self._lock = threading.Lock()

    def offer(self, step: int, total: int, x0: torch.Tensor) -> None:
        """The newest x0 estimate (engine thread: its pixels, then a reference swap)."""
        from ddpm_core.images import to_uint8

        self._latest = (step, total, to_uint8(x0))

    def publish(self) -> bool:
        """Encode and store the newest offered estimate, if any (the job's thread)."""
        latest, self._latest = self._latest, None
        if latest is None:
            return False
        step, total, x0 = latest
        return self.publish_png(step, total, preview_png(x0))

    def publish_png(self, step: int, total: int, png: bytes) -> bool:
        """Store ``png`` as this attempt's ``preview.png`` and queue its event. Best effort:
        a store that fails costs the preview, never the job."""
        with self._lock:
            try:
                self.results.put(self.job_id, PREVIEW_NAME, png, self.attempt)
            except Exception as exc:  # noqa: BLE001 - a preview is never worth a failure
                log_event(
                    log, "preview not stored", logging.WARNING, job_id=self.job_id, error=repr(exc)
                )
                return False
            self.held.preview_ready(preview_event(self.job_id, step, total))
            self.published += 1
            return True
