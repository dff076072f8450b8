"""Which rows run in the engine's next network call.

The rule is shortest remaining work first (SRPT), by job: on one server, running
the job closest to done first minimises mean latency, and a batch that stops at the
model's throughput knee (see :func:`ddpm_core.tuning.throughput_knee`) keeps each call
about as fast per image as a larger one would be. A job's rows run together, so its
images finish together; equal work goes in arrival order. Under sustained load SRPT
would starve long jobs, so a job waiting longer than ``starve_after`` seconds goes
ahead of everything younger (oldest first): the rule then degrades to FIFO, which
bounds the worst latency.

Rows are the engine's ``_Row`` objects: ``job`` (with ``submitted`` and ``_key``),
``table`` (its step table) and ``k`` (steps done).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["next_batch", "job_order"]


def job_order(rows: Sequence[Any], now: float, starve_after: float) -> list[Any]:
    """The jobs of ``rows``, most urgent first."""
    remaining: dict[int, int] = {}
    jobs: dict[int, Any] = {}
    for r in rows:
        j = id(r.job)
        jobs.setdefault(j, r.job)
        remaining[j] = remaining.get(j, 0) + len(r.table) - r.k

    def urgency(job: Any) -> tuple:
        if starve_after > 0 and now - job.submitted > starve_after:
            return (0, job.submitted, 0)
        return (1, remaining[id(job)], job.submitted)

    return sorted(jobs.values(), key=urgency)


def next_batch(
    rows: Sequence[Any], limit_of: Callable[[Any], int], now: float, starve_after: float
) -> list[Any]:
    """The rows of the next call: the most urgent job's model, up to its batch limit,
    filled job by job in :func:`job_order`."""
    if not rows:
        return []
    order = job_order(rows, now, starve_after)
    key = order[0]._key
    limit = max(1, limit_of(key))
    rank = {id(job): i for i, job in enumerate(order) if job._key == key}
    mine = [r for r in rows if id(r.job) in rank]
    mine.sort(key=lambda r: rank[id(r.job)])  # stable: a job's rows keep their order
    return mine[:limit]
