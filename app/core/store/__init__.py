"""The job store: job documents, their events, leases and every state transition, in
Redis (:mod:`app.core.store.jobstore`), the webhook outbox (:mod:`app.core.store.outbox`),
and the connections to it."""

from app.core.store import connection, jobstore, outbox
from app.core.store.connection import *  # noqa: F403 - the package's face: its modules' API
from app.core.store.jobstore import *  # noqa: F403
from app.core.store.outbox import *  # noqa: F403

__all__ = [*connection.__all__, *jobstore.__all__, *outbox.__all__]
