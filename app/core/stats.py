"""Counters and histograms kept in the store's ``stats`` hash: workers and the API add to
them in their own transitions; ``/metrics`` reads them back (:mod:`app.api.metrics`)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "QUEUE_BUCKETS",
    "RUN_BUCKETS",
    "BATCH_BUCKETS",
    "histogram_fields",
    "cumulative_buckets",
]

QUEUE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def histogram_fields(name: str, value: float, buckets: Sequence[float]) -> list[tuple[str, float]]:
    """The stats-hash increments of one histogram observation: its own bin only (the first
    bound >= value, or +Inf), its sum and its count; :func:`cumulative_buckets` turns the
    bins into Prometheus' cumulative buckets at read time, so a write is 3 increments."""
    upper = next((str(b) for b in buckets if value <= b), "+Inf")
    return [(f"{name}_bin:{upper}", 1.0), (f"{name}_sum", value), (f"{name}_count", 1.0)]


def cumulative_buckets(
    stats: dict[str, float], name: str, buckets: Sequence[float]
) -> list[tuple[float | str, float]]:
    """The cumulative (upper bound, count) pairs of histogram ``name``, +Inf last."""
    out: list[tuple[float | str, float]] = []
    total = 0.0
    for b in [*buckets, "+Inf"]:
        total += stats.get(f"{name}_bin:{b}", 0.0)
        out.append((b, total))
    return out
