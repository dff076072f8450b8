"""The webhook outbox in Redis: deliveries queued by the job transitions themselves
(lib.lua's ``webhook_enqueue``: ``completed`` in the step that finishes a job, ``start``
in the claim, ``progress`` in a lease renewal), leased and recorded by dispatchers.

Keys (under the store's prefix)::

    webhooks            sorted set: delivery id -> when it is due (Redis time, ms); a
                        leased delivery is due again when its lease ends
    webhook:{id}        hash: job, event, doc (the job's hash at the event, JSON),
                        attempts (the fencing token), queued_ms; expires with its job
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from app.core.store.jobstore import JobStore, parse_doc
from app.core.store.scripts import WEBHOOK_CLAIM, WEBHOOK_RECORD, Runner

__all__ = ["Delivery", "Outbox"]


@dataclass(frozen=True)
class Delivery:
    """A leased delivery: ``attempt`` is its fencing token; ``doc`` the job as it was."""

    id: str
    attempt: int
    job_id: str
    event: str
    doc: dict[str, Any]
    queued_ms: int
    leased_ms: int

    @property
    def url(self) -> str:
        return self.doc["webhook"]["url"]


class Outbox:
    """Leases due deliveries and records what became of them."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.due_key = store.key("webhooks")
        self._claim = Runner(WEBHOOK_CLAIM, store.r)
        self._record = Runner(WEBHOOK_RECORD, store.r)

    def lease(self, limit: int, lease_seconds: float) -> list[Delivery]:
        """Up to ``limit`` due deliveries, each leased for ``lease_seconds``."""
        rows = self._claim(
            keys={"due": self.due_key},
            args={
                "prefix": self.store.prefix,
                "lease_ms": int(lease_seconds * 1000),
                "limit": limit,
            },
        )
        out = []
        for did, attempt, job_id, event, doc, queued_ms, now in rows:
            stored = parse_doc(json.loads(doc)) or {}
            out.append(Delivery(did, int(attempt), job_id, event, stored, int(queued_ms), int(now)))
        return out

    def record(
        self,
        delivery: Delivery,
        outcome: Literal["delivered", "retry", "failed"],
        state: dict[str, Any],
        delay_seconds: float = 0.0,
    ) -> int | None:
        """Record ``delivery``'s attempt: ``state`` goes to the job's document. Returns the
        milliseconds since the delivery was queued, or None when the lease was lost (the
        attempt is no longer the delivery's: another dispatcher has it)."""
        res = self._record(
            keys={
                "due": self.due_key,
                "entry": self.store.key("webhook", delivery.id),
                "stats": self.store.key("stats"),
            },
            args={
                "prefix": self.store.prefix,
                "did": delivery.id,
                "attempt": str(delivery.attempt),
                "outcome": outcome,
                "delay_ms": int(delay_seconds * 1000),
                "state": json.dumps(state),
            },
        )
        return int(res[1]) if res[0] == "recorded" else None

    def pending(self) -> int:
        """Deliveries in the outbox (due, waiting for a retry, or being delivered)."""
        return int(self.store.r.zcard(self.due_key))
