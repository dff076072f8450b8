"""Redis connections of the job system, and which Redis errors are worth a retry.

Every redis-py client of the service is made here, from the settings: a plain URL
(``DDPM_REDIS_URL``) or, with ``DDPM_REDIS_SENTINELS``, the master that the Sentinel
nodes name (``DDPM_REDIS_MASTER_NAME``). Sentinel clients find the master again by
themselves: a connection refused, or a ``READONLY`` answer from a demoted master, drops
the connection, and the next one asks the sentinels where the master is now. The
password (``DDPM_REDIS_PASSWORD``) authenticates to the sentinels and to the data nodes
alike. Celery's broker connections take the same settings (:func:`broker_options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

__all__ = [
    "RedisTarget",
    "redis_target",
    "connect",
    "async_redis_client",
    "broker_options",
    "is_transient",
    "NotReplicated",
    "wait_for_replica",
]

# Short timeouts, so that an unreachable Redis (or sentinel) fails fast.
CONNECT_TIMEOUT = 3.0
SOCKET_TIMEOUT = 10.0
HEALTH_CHECK_INTERVAL = 30
# A Sentinel client retries a command once more on a connection error: a pooled
# connection to a master that died or was demoted fails once, and the new connection asks
# the sentinels. Longer outages are the callers' to ride out (the store's retries, 503s).
SENTINEL_RETRIES = 2


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.5, base=0.05)


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: a ``url``, or Sentinel ``nodes`` and the ``master`` name (db 0)."""

    url: str | None = None
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = "ddpm"
    password: str | None = None

    @property
    def sentinel(self) -> bool:
        return bool(self.nodes)

    def describe(self) -> str:
        """Where it is, for logs (no password)."""
        if self.sentinel:
            nodes = ",".join(f"{h}:{p}" for h, p in self.nodes)
            return f"sentinel master {self.master!r} via {nodes}"
        parts = urlsplit(self.url or "")
        return f"{parts.hostname}:{parts.port or 6379}"


def redis_target(settings: Any) -> RedisTarget:
    """The :class:`RedisTarget` that ``settings`` (:class:`app.core.settings.Settings`) name."""
    nodes = tuple(settings.sentinel_nodes)
    if nodes:
        return RedisTarget(None, nodes, settings.redis_master_name, settings.redis_password)
    return RedisTarget(settings.broker_url)


def _target(where: Any) -> RedisTarget:
    if isinstance(where, RedisTarget):
        return where
    if isinstance(where, str):
        return RedisTarget(where)
    return redis_target(where)


def _sentinel_kwargs(t: RedisTarget) -> dict[str, Any]:
    """How clients talk to the sentinels themselves: the same password, short timeouts."""
    kw: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": CONNECT_TIMEOUT,
    }
    if t.password:
        kw["password"] = t.password
    return kw


class _MasterConnection(sentinel.SentinelManagedConnection):
    """A master connection that asks the sentinels where the master is on every (re)connect.

    redis-py's Sentinel connection does so in ``connect()``, but a command sent on a
    connection that was dropped (the master died, or was demoted: READONLY) reconnects
    through ``connect_check_health()`` to the address it had, the old master's; the retry
    then fails as the first try did."""

    _resolving = False

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True):
        if self._sock is None and not self._resolving and self.connection_pool.is_master:
            self._resolving = True
            try:
                return self.connect()  # discovers the master, then connects to it
            finally:
                self._resolving = False
        return super().connect_check_health(check_health, retry_socket_connect)


class _AsyncMasterConnection(asentinel.SentinelManagedConnection):
    """:class:`_MasterConnection` for asyncio clients."""

    _resolving = False

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ):
        if not self.is_connected and not self._resolving and self.connection_pool.is_master:
            self._resolving = True
            try:
                return await self.connect()
            finally:
                self._resolving = False
        return await super().connect_check_health(check_health, retry_socket_connect)


def _client_options(decode: bool, socket_timeout: float) -> dict[str, Any]:
    """What every client of ours, sync or async, is made with."""
    return {
        "decode_responses": decode,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
    }


def connect(where: Any, decode: bool = True, **options: Any) -> redis.Redis:
    """A redis-py client for ``where`` (a URL, a :class:`RedisTarget` or the settings),
    with short timeouts; the master of a Sentinel group when it names one. ``options``
    override the client's defaults (``socket_timeout``, say)."""
    t = _target(where)
    kw = _client_options(decode, SOCKET_TIMEOUT) | options
    if not t.sentinel:
        return redis.Redis.from_url(t.url or "redis://127.0.0.1:6379/0", **kw)
    manager = sentinel.Sentinel(list(t.nodes), sentinel_kwargs=_sentinel_kwargs(t))
    if t.password:
        kw["password"] = t.password
    kw.setdefault("retry", Retry(_backoff(), SENTINEL_RETRIES))
    kw["connection_class"] = _MasterConnection
    return manager.master_for(t.master, redis_class=redis.Redis, db=0, **kw)


class _BlockingSentinelPool(asentinel.SentinelConnectionPool, aredis.BlockingConnectionPool):
    """A Sentinel-managed async pool that, at its cap, waits for a free connection (as
    :class:`redis.asyncio.BlockingConnectionPool` does) instead of failing."""


def async_redis_client(
    where: Any, *, socket_timeout: float, max_connections: int, decode: bool = True
) -> aredis.Redis:
    """An asyncio client for ``where`` (as :func:`connect`): a blocking pool of at most
    ``max_connections`` (a command waits up to 10 s for a free one), owned by the client
    (``aclose()`` closes it)."""
    t = _target(where)
    kw = _client_options(decode, socket_timeout) | {
        "max_connections": max_connections,
        "timeout": 10,
    }
    if not t.sentinel:
        pool = aredis.BlockingConnectionPool.from_url(t.url or "redis://127.0.0.1:6379/0", **kw)
        return aredis.Redis.from_pool(pool)
    manager = asentinel.Sentinel(list(t.nodes), sentinel_kwargs=_sentinel_kwargs(t))
    if t.password:
        kw["password"] = t.password
    kw["retry"] = AsyncRetry(_backoff(), SENTINEL_RETRIES)
    kw["connection_class"] = _AsyncMasterConnection
    return manager.master_for(
        t.master, redis_class=aredis.Redis, connection_pool_class=_BlockingSentinelPool, db=0, **kw
    )


def broker_options(settings: Any) -> dict[str, Any]:
    """Celery/kombu transport options for the settings' Redis: with Sentinel, the master
    name and how to reach the sentinels (kombu reads the broker URL's first node for the
    password of the data nodes, ``sentinel_kwargs`` for the sentinels')."""
    t = redis_target(settings)
    if not t.sentinel:
        return {}
    return {"master_name": t.master, "sentinel_kwargs": _sentinel_kwargs(t)}


class NotReplicated(redis.ConnectionError):
    """A write reached the master but no replica confirmed it in time (``WAIT``). A
    connection error, so that every retry of the store treats it as "try again"."""


def wait_for_replica(acked: Any, what: str, timeout: float) -> None:
    """Raise :class:`NotReplicated` unless ``acked`` (a ``WAIT`` reply) counts a replica."""
    if int(acked or 0) < 1:
        raise NotReplicated(
            f"{what}: no replica confirmed the write within {timeout:g} s "
            "(DDPM_REDIS_REPLICATED_ACK)"
        )


# redis-py strips the error code from the exceptions it maps to classes of their own, so
# these are told by class; others (MASTERDOWN, ...) by the code that heads the message.
_TRANSIENT_CLASSES = (
    redis.ConnectionError,  # includes BusyLoadingError, MasterNotFoundError, NotReplicated
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a demoted master: the next connection finds the new one
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a Redis error means "try again later" (unreachable, loading, out of memory,
    a master demoted or not yet elected, a replica that did not confirm) rather than a bug."""
    if isinstance(exc, _TRANSIENT_CLASSES):
        return True
    if isinstance(exc, redis.ResponseError):
        head = str(exc).split(" ", 1)[0]
        return head in ("OOM", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "BUSY")
    return False
