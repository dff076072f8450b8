"""Two narrow patches of kombu's Redis transport that the workers need (see each
function); :func:`apply` installs them, once, and only a worker process calls it
(:mod:`worker.celery_app`)."""

from __future__ import annotations

from typing import Any

import redis

__all__ = ["apply"]


def apply() -> None:
    """Install both patches (idempotent)."""
    _tolerate_detached_transport()
    _reuse_sync_client()


def _tolerate_detached_transport() -> None:
    """Keep workers alive through a Redis restart (a narrow patch of kombu's Redis channel).

    On a lost broker connection Celery 5.7 calls ``connection.collect()``, which detaches
    the transport (``transport.client = None``), and then ``connection.close()``. Closing
    the Redis channel restores its unacked messages through a new connection pool whose
    parameters are read from that detached client: ``AttributeError: 'NoneType' object
    has no attribute 'hostname'``, which the closing code does not ignore (it ignores
    connection errors only), and the worker stops with "Unrecoverable error" after every
    Redis restart with tasks in flight. A detached channel cannot connect again: say so
    with a connection error, which is ignored there as intended. Its unacked messages stay
    in Redis (the visibility timeout restores them; job leases make them redundant)."""
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "_ddpm_patched", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker channel was closed")
        return original(self, asynchronous=asynchronous)

    _connparams._ddpm_patched = True  # type: ignore[attr-defined]
    _connparams.__wrapped__ = original  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams


def _reuse_sync_client() -> None:
    """Build kombu's synchronous Redis client once per connection pool, not per call.

    kombu's Redis channel makes a new ``redis.Redis`` for every publish and every ack
    (``conn_or_acquire``); redis-py copies its ~170 response callbacks into a fresh
    case-insensitive dict each time, ~0.2 ms, which was a third of ``send_task`` and a
    large share of a worker's time per short job. A client holds nothing but its pool
    and is thread-safe, so one per pool is equivalent; a new pool (after a reconnect)
    gets a new client. The asynchronous client (the poller's) is left alone."""
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._create_client
    if getattr(original, "_ddpm_patched", False):
        return

    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return original(self, asynchronous=True)
        pool = self.pool
        cached = self.__dict__.get("_ddpm_sync_client")
        if cached is None or cached.connection_pool is not pool:
            cached = original(self, asynchronous=False)
            self.__dict__["_ddpm_sync_client"] = cached
        return cached

    _create_client._ddpm_patched = True  # type: ignore[attr-defined]
    _create_client.__wrapped__ = original  # type: ignore[attr-defined]
    kombu_redis.Channel._create_client = _create_client
