"""Async Redis clients for the API's event loop (event streams, long polls)."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import redis.asyncio as aredis

from app.core.store import async_redis_client

__all__ = ["AsyncRedis"]


class AsyncRedis:
    """Async Redis clients for one Redis (a URL or a :class:`app.core.store.RedisTarget`:
    with Sentinel, the current master), one per event loop (uvicorn runs one loop; a
    TestClient may run a loop per request, and a connection belongs to its loop)."""

    def __init__(self, where: Any, read_timeout: float, max_connections: int) -> None:
        self.where = where
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> aredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # Blocking: at the cap a command waits for a free connection (up to 10 s) rather
            # than failing; a burst of finished long polls reads at once.
            client = async_redis_client(  # owns its pool: aclose() closes it
                self.where, socket_timeout=self.read_timeout, max_connections=self.max_connections
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the running loop's client (others died with their loops)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        self._clients.clear()
        if client is not None:
            await client.aclose()
