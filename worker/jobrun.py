"""The life of one job on a worker: claim, hold the lease, run, record the outcome.

Every job, generate or train, goes through :func:`run_job`:

1. ``claim``: queued -> running with a new attempt number (the fencing token) and a
   lease. A message for a job that is not queued (running elsewhere, finished, gone)
   does nothing, so duplicate or late messages are harmless.
2. The job's body runs while the monitor renews the lease. The body stores the results
   itself, before returning its :class:`Outcome`.
3. ``finish`` records the outcome in one atomic step, fenced by the attempt: a worker
   whose lease was taken over changes nothing. While Redis is unreachable the worker
   keeps its results and retries (``store_retry_seconds``); the task returns -- and the
   broker message is acked -- only after that.

If the worker dies anywhere in between, its lease expires and the reaper queues the
job again: every accepted job finishes, and exactly one outcome is recorded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from app.core.jobs.names import TASK_OF
from app.core.logs import log_event
from app.core.store import Claim, NotReplicated, is_transient
from worker import job_trace
from worker.monitor import Held
from worker.runtime import Runtime

__all__ = ["Outcome", "run_job", "durably", "public_message", "Interrupted"]

log = logging.getLogger("ddpm.worker")

T = TypeVar("T")


class Interrupted(Exception):
    """The worker stops before the job could finish: the job goes back to its queue."""


@dataclass
class Outcome:
    """How a job ended: ``succeeded``, ``failed`` or ``canceled``, with the document fields
    to record (result, error, metrics...) and counters to add in the same step."""

    status: str
    fields: dict[str, Any] = field(default_factory=dict)
    stats: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def failed(cls, type_: str, message: str, **fields: Any) -> Outcome:
        return cls("failed", {"error": {"type": type_, "message": message}} | fields)

    @classmethod
    def canceled(cls, message: str, **fields: Any) -> Outcome:
        return cls("canceled", {"error": {"type": "Canceled", "message": message}} | fields)


Body = Callable[[Runtime, Claim, Held], Outcome]


def durably(rt: Runtime, what: str, fn: Callable[[], T], job_id: str | None = None) -> T:
    """Call ``fn``, retrying with backoff while Redis is unreachable (or loading, or out of
    memory, or a master was demoted, or no replica confirmed a write that must be
    replicated) for up to ``store_retry_seconds``; other errors propagate at once."""
    deadline = time.monotonic() + rt.settings.store_retry_seconds
    delay, tries = 0.2, 0
    while True:
        try:
            return fn()
        except redis.RedisError as exc:
            if not is_transient(exc) or time.monotonic() >= deadline:
                raise
            tries += 1
            if tries == 1 or tries % 10 == 0:
                why = "no replica confirmed" if isinstance(exc, NotReplicated) else "unreachable"
                log_event(
                    log,
                    f"job store {why}; retrying {what}",
                    logging.WARNING,
                    job_id=job_id,
                    tries=tries,
                    error=repr(exc),
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)*([^\s/:'\"]+)")


def public_message(message: str, rt: Runtime) -> str:
    """An error message fit for the job document: no absolute server paths (the data
    directory becomes ``DATA_DIR``, any other path its last component)."""
    root = str(Path(rt.settings.data_dir).resolve())
    message = message.replace(root, "DATA_DIR")
    return _ABS_PATH.sub(lambda m: m.group(1), message)


def run_job(rt: Runtime, kind: str, job_id: str, body: Body) -> str | None:
    """Run job ``job_id`` of ``kind`` if it is queued; returns the recorded status, None
    when there was nothing to run, ``stale`` when the attempt lost its lease."""
    store = rt.store
    claim_start = time.time()
    claim = durably(rt, "claim", lambda: store.claim(job_id, kind, rt.name), job_id)
    if claim is None:
        log_event(log, "nothing to run (running elsewhere, finished or gone)", job_id=job_id)
        return None
    log_event(log, "job started", job_id=job_id, kind=kind, attempt=claim.attempt, worker=rt.name)
    trace = job_trace.begin(claim.doc, kind, job_id, claim.attempt, claim_start, time.time())
    monitor = rt.monitor()
    held = monitor.hold(job_id, kind, claim.attempt)
    status: str | None = None
    try:
        try:
            outcome = body(rt, claim, held)
        except Interrupted as exc:
            back = durably(rt, "give back", lambda: store.requeue(job_id, kind, claim.attempt))
            if back == "requeued":
                rt.celery.send_task(TASK_OF[kind], args=[job_id], task_id=job_id)
            log_event(log, "job given back to the queue", job_id=job_id, reason=str(exc))
            status = "requeued"
            return status
        except Exception as exc:  # noqa: BLE001 - the job fails with a readable error
            log.exception("job body raised", extra={"job_id": job_id})
            outcome = Outcome.failed(type(exc).__name__, public_message(str(exc), rt))
        if held.lost.is_set():
            log_event(log, "outcome discarded: the lease was lost", job_id=job_id)
            return "stale"
        held.pending = None  # the outcome carries the last progress
        held.finishing = True
        if "error" in outcome.fields:
            err = outcome.fields["error"]
            err["message"] = public_message(err.get("message", ""), rt)
        with trace.phase("finish", status=outcome.status):
            recorded = durably(
                rt,
                "finish",
                lambda: store.finish(
                    job_id,
                    kind,
                    outcome.status,
                    claim.attempt,
                    stats=outcome.stats,
                    **outcome.fields,
                ),
                job_id,
            )
        if not recorded:
            log_event(log, "outcome discarded: another attempt owns the job", job_id=job_id)
            return "stale"
        level = logging.INFO if outcome.status == "succeeded" else logging.WARNING
        error = outcome.fields.get("error") or {}
        log_event(
            log,
            f"job {outcome.status}",
            level,
            job_id=job_id,
            kind=kind,
            attempt=claim.attempt,
            error=f"{error.get('type')}: {error.get('message')}" if error else None,
        )
        status = outcome.status
        return status
    finally:
        trace.end(status or "not recorded")
        monitor.release(held)
