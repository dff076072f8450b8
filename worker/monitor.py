"""The leases of one worker's running jobs, kept alive by one thread.

Every running job holds a lease in Redis that expires unless renewed (the reaper
re-queues jobs whose lease expired: their worker died). A worker runs many jobs
at once, so one thread renews them all: every ``interval`` one pipeline renews
each held lease, writes the job's latest progress (fenced by its attempt) and
reads back whether a cancel was requested, the lease was lost or a client watches the
job's live preview (then the job's pending ``preview`` event goes out too). The engine and
the training loop only record progress in memory; they never wait on Redis, and
a Redis outage costs them nothing (the next tick after it retries).

A job whose runner has stalled (``alive()`` false for ``stall_timeout``: a wedged
engine or training loop) is no longer renewed, so another worker takes it over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from app.core.logs import log_event
from app.core.store import RENEW_CANCEL, RENEW_PREVIEW, JobStore

__all__ = ["Held", "JobMonitor"]

log = logging.getLogger("ddpm.monitor")


@dataclass(eq=False)
class Held:
    """A job this worker runs under a lease. ``cancel`` is set when a cancel is requested or
    the lease is lost (then ``lost`` too: the attempt's outcome will be discarded)."""

    job_id: str
    kind: str
    attempt: int
    alive: Callable[[], bool] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    pending: dict[str, Any] | None = None
    # Live previews: ``preview`` is set while a client watches (the store's preview flag);
    # ``pending_preview`` is the next ``preview`` event, written at the monitor's next tick.
    preview: threading.Event = field(default_factory=threading.Event)
    pending_preview: dict[str, Any] | None = None
    # Set just before the outcome is recorded: a renew that then finds the job finished
    # (by this very attempt) has lost nothing.
    finishing: bool = False

    def progress(self, data: dict[str, Any]) -> None:
        """Record the latest progress event data (written at the monitor's next tick)."""
        self.pending = data  # one reference swap: atomic under the GIL

    def preview_ready(self, data: dict[str, Any]) -> None:
        """Record a ``preview`` event (its file is stored): written at the next tick."""
        self.pending_preview = data


class JobMonitor:
    """Lease renewal, fenced progress writes and cancel checks for one worker process."""

    def __init__(self, store: JobStore, interval: float = 0.25) -> None:
        self.store = store
        self.interval = max(0.02, interval)
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}
        self._stop = threading.Event()
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name="ddpm-job-monitor", daemon=True)
        self._thread.start()

    def hold(
        self, job_id: str, kind: str, attempt: int, alive: Callable[[], bool] | None = None
    ) -> Held:
        """Keep the lease of a just-claimed job alive until :meth:`release`."""
        held = Held(job_id, kind, attempt, alive)
        with self._lock:
            self._held[job_id] = held
        return held

    def release(self, held: Held) -> None:
        with self._lock:
            if self._held.get(held.job_id) is held:
                del self._held[held.job_id]

    def held(self) -> list[Held]:
        with self._lock:
            return list(self._held.values())

    def flush(self) -> None:
        """One tick: renew every live lease and write pending progress, per job kind."""
        by_kind: dict[str, list[Held]] = {}
        for h in self.held():
            if h.alive is None or h.alive():
                by_kind.setdefault(h.kind, []).append(h)
        for kind, items in by_kind.items():
            progress, previews = {}, {}
            for h in items:
                data, h.pending = h.pending, None
                if data is not None:
                    progress[h.job_id] = data
                shown, h.pending_preview = h.pending_preview, None
                if shown is not None:
                    previews[h.job_id] = shown
            try:
                held = {h.job_id: h.attempt for h in items}
                states = self.store.renew(kind, held, progress, previews)
            except Exception:
                for h in items:  # keep the newest progress for the next tick
                    if h.job_id in progress and h.pending is None:
                        h.pending = progress[h.job_id]
                    if h.job_id in previews and h.pending_preview is None:
                        h.pending_preview = previews[h.job_id]
                raise
            for h in items:
                state = states.get(h.job_id, 0)
                if state < 0 and h.finishing:
                    continue  # our own finish got there first (or will report stale)
                if state < 0:
                    h.preview.clear()
                    if not h.lost.is_set():
                        h.lost.set()
                        h.cancel.set()
                        log_event(
                            log,
                            "lease lost: another attempt owns the job or it finished; stopping",
                            logging.WARNING,
                            job_id=h.job_id,
                            attempt=h.attempt,
                        )
                    continue
                if state & RENEW_CANCEL and not h.cancel.is_set():
                    h.cancel.set()
                    log_event(log, "cancel requested", job_id=h.job_id)
                if state & RENEW_PREVIEW:
                    h.preview.set()
                else:
                    h.preview.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
                if self._failing_since is not None:
                    down = time.monotonic() - self._failing_since
                    log_event(log, "job store reachable again", down_s=round(down, 1))
                    self._failing_since = None
            except redis.RedisError as exc:
                # Redis is down or restarting: the leases are renewed when it is back.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log_event(log, "lease renewal failed", logging.WARNING, error=repr(exc))
            except Exception as exc:  # noqa: BLE001 - the monitor must outlive any bug
                log_event(log, "job monitor tick failed", logging.ERROR, error=repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
