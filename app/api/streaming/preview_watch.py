"""The API's half of live previews: keep a job's preview flag alive while a stream that
asked for previews is open (see :mod:`app.core.jobs.previews`)."""

from __future__ import annotations

import time

import redis.asyncio as aredis

from app.core.jobs.previews import PREVIEW_REFRESH, PREVIEW_TTL

__all__ = ["PreviewWatch"]


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
