"""Deadlines enforced by the API too: every worker's reaper cancels queued jobs past
their deadline, and so does each API process, so that they end ``canceled`` even with
every worker down (the claim refuses them anyway)."""

from __future__ import annotations

import logging
import threading

import redis

from app.core.logs import log_event
from app.core.store import JobStore

__all__ = ["DeadlineSweeper"]

log = logging.getLogger("ddpm.api")


class DeadlineSweeper:
    """A daemon thread running :meth:`JobStore.expire_deadlines` every ``interval`` s."""

    def __init__(self, store: JobStore, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)

    def start(self) -> DeadlineSweeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                n = self.store.expire_deadlines()
            except redis.RedisError as exc:
                log_event(log, "deadline sweep failed", logging.WARNING, error=str(exc))
                continue
            if n:
                log_event(log, "queued jobs past their deadline canceled", jobs=n)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
