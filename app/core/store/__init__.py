"""The job store: job documents, their events, leases and every state transition, in
Redis (:mod:`app.core.store.jobstore`), and the connections to it."""

from app.core.store import connection, jobstore
from app.core.store.connection import *  # noqa: F403 - the package's face: both modules' API
from app.core.store.jobstore import *  # noqa: F403

__all__ = [*connection.__all__, *jobstore.__all__]
