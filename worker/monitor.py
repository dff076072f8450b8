"""What running generation jobs of one worker share with Redis, done by one thread.

Progress updates and cancel checks are per job, but a worker runs many jobs at
once (continuous batching): one Redis round trip per job per update would load
the engine thread (which reports progress) and the GIL (many polling task
threads). The monitor coalesces them: the engine only records the latest
progress of a job in memory; every ``interval`` one pipeline writes all pending
progress (job hash + event stream) and reads every watched job's cancel flag.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from app.logs import log_event
from app.store import JobStore

__all__ = ["JobMonitor"]

log = logging.getLogger("ddpm.monitor")


class JobMonitor:
    """Batched progress writes and cancel-flag reads for the jobs of one worker process."""

    def __init__(self, store: JobStore, interval: float = 0.2) -> None:
        self.store = store
        self.interval = max(0.02, interval)
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        self._watched: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ddpm-job-monitor", daemon=True)
        self._thread.start()

    def progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Record the latest progress of a job (no I/O; written at the next tick)."""
        with self._lock:
            self._pending[job_id] = progress

    def watch(self, job_id: str, cancel: threading.Event) -> None:
        """Set ``cancel`` when the job's cancel flag appears in Redis."""
        with self._lock:
            self._watched[job_id] = cancel

    def release(self, job_id: str) -> None:
        """Stop watching the job and write its last progress now (before its final status)."""
        with self._lock:
            self._watched.pop(job_id, None)
            last = self._pending.pop(job_id, None)
        if last is not None:
            self.store.record_progress({job_id: last})

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            watched = dict(self._watched)
        if pending:
            self.store.record_progress(pending)
        if watched:
            ids = list(watched)
            for job_id, flagged in zip(ids, self.store.cancel_flags(ids), strict=True):
                if flagged:
                    watched[job_id].set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - Redis hiccups: the next tick retries
                log_event(log, "job monitor tick failed", logging.WARNING, error=repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
