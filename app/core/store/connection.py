"""Redis connections of the job system, and which Redis errors are worth a retry."""

from __future__ import annotations

import redis

__all__ = ["connect", "is_transient"]


def connect(url: str, decode: bool = True) -> redis.Redis:
    """A redis-py client with short timeouts, so that an unreachable Redis fails fast."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_connect_timeout=3,
        socket_timeout=10,
        health_check_interval=30,
    )


def is_transient(exc: BaseException) -> bool:
    """Whether a Redis error means "try again later" (unreachable, loading, out of memory,
    a replica promoted) rather than a bug."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return True
    if isinstance(exc, redis.ResponseError):
        head = str(exc).split(" ", 1)[0]
        return head in ("OOM", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "BUSY")
    return False
