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
    "checkpoint_fields",
    "by_checkpoint",
    "OTHER",
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


# Per-checkpoint copies of a job's stats: ``ckpt:{name}:{field}`` (a checkpoint name
# has no colon). /metrics labels the busiest few by name and folds the rest into OTHER,
# so the label's cardinality stays bounded however many checkpoints come and go.
_CKPT = "ckpt:"
OTHER = "_other"  # no checkpoint name starts with "_" (NAME_PATTERN)


def checkpoint_fields(ref: str, fields: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """``fields`` again under the name of checkpoint ``ref`` (``name@version``)."""
    name = ref.split("@", 1)[0]
    return [(f"{_CKPT}{name}:{field}", value) for field, value in fields]


def by_checkpoint(stats: dict[str, float], top: int, rank_by: str) -> dict[str, dict[str, float]]:
    """The per-checkpoint stats, by name: the ``top`` names with the most ``rank_by``,
    and every other name summed into :data:`OTHER`."""
    names: dict[str, dict[str, float]] = {}
    for key, value in stats.items():
        if key.startswith(_CKPT):
            name, _, field = key[len(_CKPT) :].partition(":")
            names.setdefault(name, {})[field] = value
    ranked = sorted(names, key=lambda n: (-names[n].get(rank_by, 0.0), n))
    out = {n: names[n] for n in ranked[:top]}
    rest = ranked[top:]
    if rest:
        other: dict[str, float] = {}
        for n in rest:
            for field, value in names[n].items():
                other[field] = other.get(field, 0.0) + value
        out[OTHER] = other
    return out
