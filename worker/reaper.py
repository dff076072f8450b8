"""The reaper: brings back the jobs of dead workers, re-sends lost messages, deletes expired
results. Every worker process runs one (so it runs wherever the service runs); their
passes are idempotent transitions of the store, so several reapers never conflict.

- A ``running`` job whose lease expired (its worker stopped renewing it: killed, wedged,
  cut off) is re-queued and its message sent again; after ``max_attempts`` it fails.
  Leases are judged by the Redis clock, and not at all during the first ``lease_ttl``
  after Redis started: a restarted Redis holds leases that live workers could not renew
  while it was down, and they get one full lease period to do so.
- A ``queued`` job older than ``redispatch_after`` whose message is nowhere in the broker
  (neither waiting nor delivered) gets a new one. Duplicates are harmless: a message for
  a job that is no longer queued does nothing.
- Finished jobs whose documents expired lose their result files and training run folders.
- Jobs past their deadline: queued ones are canceled, running ones told to stop.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from app.core.jobs.ids import is_job_id
from app.core.jobs.names import QUEUE_OF_TASK, TASK_OF
from app.core.logs import log_event
from app.core.queue import pending_task_ids
from app.core.settings import Settings
from app.core.storage.results import DiskResults, ResultStore
from app.core.store import JobStore

__all__ = ["Reaper"]

log = logging.getLogger("ddpm.reaper")

KINDS = ("generate", "train")


class Reaper:
    """One reaper pass per :meth:`tick`."""

    def __init__(
        self,
        store: JobStore,
        celery: Any,
        settings: Settings,
        result_stores: list[ResultStore] | None = None,
    ) -> None:
        self.store = store
        self.celery = celery
        self.settings = settings
        # Where expired results are deleted: the disk, and the object store if configured.
        # Redis-stored results expire by themselves.
        self.result_stores = result_stores or [DiskResults(settings.data_dir)]
        self._next_redispatch = 0.0
        self._grace_logged = False

    def tick(self) -> None:
        self.reap_expired_leases()
        if self.store.expire_deadlines():
            log_event(log, "queued jobs past their deadline canceled")
        now = time.monotonic()
        if now >= self._next_redispatch:
            self._next_redispatch = now + self.settings.redispatch_after / 2
            self.redispatch_lost_messages()
            self.delete_expired_results()

    def reap_expired_leases(self) -> None:
        uptime = self.store.redis_uptime()
        if uptime < self.settings.lease_ttl:
            if not self._grace_logged:
                self._grace_logged = True
                log_event(log, "redis restarted recently: leases get a grace period", up_s=uptime)
            return
        self._grace_logged = False
        for kind in KINDS:
            for job_id in self.store.expired_leases(kind):
                outcome = self.store.requeue(job_id, kind)
                if outcome == "requeued":
                    self._send(kind, job_id)
                    log_event(log, "lease expired: job re-queued", logging.WARNING, job_id=job_id)
                elif outcome in ("failed", "canceled"):
                    log_event(log, f"lease expired: job {outcome}", logging.WARNING, job_id=job_id)

    def redispatch_lost_messages(self) -> None:
        cutoff = time.time() - self.settings.redispatch_after
        for kind in KINDS:
            old = self.store.queued_before(kind, cutoff)
            if not old:
                continue
            queue = QUEUE_OF_TASK[TASK_OF[kind]]
            present = pending_task_ids(self.store.r, self.settings, queue, delivered_after=cutoff)
            for job_id in old:
                if job_id not in present:
                    self._send(kind, job_id)
                    log_event(
                        log, "queued job had no message: re-sent", logging.WARNING, job_id=job_id
                    )

    def delete_expired_results(self) -> None:
        expired = self.store.expired_jobs()
        if not expired:
            return
        runs = Path(self.settings.data_dir).resolve() / "runs"
        gone = [j for j in expired if not self.store.r.exists(self.store.job_key(j))]
        for job_id in gone:
            if is_job_id(job_id):  # never a path from Redis unchecked
                for results in self.result_stores:
                    results.delete(job_id)
                shutil.rmtree(runs / job_id, ignore_errors=True)
        self.store.forget_expired(gone)
        if gone:
            log_event(log, "expired job results deleted", jobs=len(gone))

    def _send(self, kind: str, job_id: str) -> None:
        self.celery.send_task(TASK_OF[kind], args=[job_id], task_id=job_id)
