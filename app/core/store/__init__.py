"""The job store: job documents, their events, leases and every state transition, in
Redis (:mod:`app.core.store.jobstore`), and the connections to it."""

from app.core.store.connection import connect, is_transient
from app.core.store.jobstore import (
    RENEW_CANCEL,
    RENEW_PREVIEW,
    Claim,
    ClientLimit,
    IdempotencyConflict,
    JobStore,
    QueueFull,
    Submission,
    fingerprint,
    now_iso,
    parse_doc,
    store_from_settings,
)

__all__ = [
    "JobStore",
    "Claim",
    "Submission",
    "QueueFull",
    "ClientLimit",
    "IdempotencyConflict",
    "connect",
    "is_transient",
    "store_from_settings",
    "now_iso",
    "fingerprint",
    "parse_doc",
    "RENEW_CANCEL",
    "RENEW_PREVIEW",
]
