"""Live previews of running jobs: who watches, and where the latest grid is.

A client asks for previews by opening ``GET /jobs/{id}/events?preview=1``. While that
stream stays open the API keeps a short-lived flag ``job:{id}:preview`` alive
(:class:`PreviewWatch`); the worker's monitor reads the flag back with every lease
renewal. Only then does the worker copy the rows' x0 estimate off the device, encode a
small PNG grid as the result file ``preview.png`` (per attempt, like the images) and
record a ``preview`` event ``{"step", "total", "url"}``. Nobody watching costs the
worker one flag check per step and nothing else.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aredis

__all__ = ["PREVIEW_TTL", "PREVIEW_REFRESH", "PREVIEW_NAME", "PreviewWatch", "preview_event"]

PREVIEW_NAME = "preview.png"
PREVIEW_TTL = 10.0  # seconds the flag outlives its last refresh (a closed stream)
PREVIEW_REFRESH = 3.0  # seconds between refreshes while the stream is open


class PreviewWatch:
    """Keeps ``job:{id}:preview`` (``key``) alive while an event stream that asked for
    previews is open: call :meth:`refresh` from the stream's loop (it writes at most every
    ``PREVIEW_REFRESH`` seconds) through the stream's async Redis client."""

    def __init__(self, r: aredis.Redis, key: str) -> None:
        self.r = r
        self.key = key
        self._last = float("-inf")

    async def refresh(self) -> None:
        now = time.monotonic()
        if now - self._last >= PREVIEW_REFRESH:
            self._last = now
            await self.r.set(self.key, "1", px=int(PREVIEW_TTL * 1000))


def preview_event(job_id: str, step: int, total: int) -> dict[str, Any]:
    """The data of a ``preview`` event; the step in the URL makes each one a new resource
    for the browser's cache."""
    return {"step": step, "total": total, "url": f"/jobs/{job_id}/{PREVIEW_NAME}?step={step}"}
