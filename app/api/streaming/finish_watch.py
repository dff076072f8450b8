"""Long polls without polling: ``GET /jobs/{id}?wait=`` waits here for the job to finish.

Every terminal transition in the store publishes the job id on one channel
(:meth:`app.core.store.JobStore.finished_channel`). Each event loop of the API holds ONE
subscription to it and wakes the requests waiting for that id, so a thousand waiting
clients cost a thousand futures and one Redis connection, and no request reads Redis
until its job has finished (or its wait is over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import redis

from app.api.streaming.aredis import AsyncRedis
from app.core.jobs.names import TERMINAL
from app.core.logs import log_event

__all__ = ["FinishWatch"]

log = logging.getLogger("ddpm.api")
Doc = dict[str, Any] | None


class _LoopState:
    """The subscription and the waiters of one event loop."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Event]] = {}
        self.subscribed = asyncio.Event()
        self.task: asyncio.Task | None = None

    def wake(self, job_id: str | None = None) -> None:
        """Wake the waiters of ``job_id``; every waiter when None (they read again)."""
        groups = self.waiters.values() if job_id is None else [self.waiters.get(job_id, ())]
        for group in groups:
            for event in group:
                event.set()


class FinishWatch:
    """Waits for jobs to reach a terminal status, woken by the store's channel."""

    def __init__(self, aredis: AsyncRedis, channel: str, poll_interval: float = 5.0) -> None:
        self.aredis = aredis
        self.channel = channel
        # While the subscription is down (Redis restarting) waiters read again this often.
        self.poll_interval = poll_interval
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        if state.task is None or state.task.done():
            state.task = loop.create_task(self._listen(state), name="ddpm-finish-watch")
        return state

    async def _listen(self, state: _LoopState) -> None:
        delay = 0.1
        while True:
            pubsub = self.aredis.get().pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                state.subscribed.set()
                delay = 0.1
                while True:
                    msg = await pubsub.get_message(timeout=10.0)
                    if msg is not None and msg.get("type") == "message":
                        state.wake(msg["data"])
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                if state.subscribed.is_set():
                    log_event(log, "finish watch lost its subscription", logging.WARNING,
                              error=repr(exc))  # fmt: skip
                state.subscribed.clear()
                state.wake()  # a finish may have been missed: everyone reads again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def wait(
        self,
        job_id: str,
        read: Callable[[], Awaitable[Doc]],
        timeout: float,
        current: Doc = None,
    ) -> Doc:
        """``read()`` the job's document until it is terminal, gone, or ``timeout`` seconds
        have passed; returns the last document read. ``current``: a document just read (or
        written), which saves the first read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        doc = current if current is not None else await read()
        state = self._state()
        while doc is not None and doc.get("status") not in TERMINAL:
            left = deadline - loop.time()
            if left <= 0:
                break
            event = asyncio.Event()
            group = state.waiters.setdefault(job_id, set())
            group.add(event)
            try:
                if not state.subscribed.is_set():
                    # Not subscribed (yet): a finish could pass unseen, so read again soon.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            state.subscribed.wait(), min(left, self.poll_interval)
                        )
                # Registered (and subscribed) before this read: a finish after it wakes us.
                doc = await read()
                if doc is None or doc.get("status") in TERMINAL:
                    break
                left = deadline - loop.time()
                limit = left if state.subscribed.is_set() else min(left, self.poll_interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), max(0.0, limit))
            finally:
                group.discard(event)
                if not group:
                    state.waiters.pop(job_id, None)
        return doc

    def waiting(self) -> int:
        """Requests waiting now, on every loop (for tests and /metrics)."""
        return sum(len(g) for s in list(self._states.values()) for g in s.waiters.values())

    async def aclose(self) -> None:
        """Stop the running loop's subscription."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None and state.task is not None:
            state.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await state.task
