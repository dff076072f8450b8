"""The Celery app of the service: Redis broker, queues ``gen`` and ``train``, late acks.

The API sends by task name and never imports a task body; a worker builds its app with
:data:`worker.celery_app.app`, which names the task modules. Also the broker-side view
the reaper uses: which task messages wait or are in flight.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from app.core.jobs.names import GEN_QUEUE, GENERATE_TASK, TRAIN_QUEUE, TRAIN_TASK
from app.core.settings import Settings, get_settings
from app.core.store.connection import broker_options

__all__ = ["make_celery", "pending_task_ids"]

# kombu's Redis transport keeps priority levels in lists named queue + sep + level.
_PRIORITY_SEP, _PRIORITY_STEPS = "\x06\x16", (3, 6, 9)


def make_celery(settings: Settings | None = None, include: Sequence[str] = ()) -> Celery:
    """A Celery app for ``settings``: late acks, prefetch 1, keys under our prefix.

    Messages only wake workers up: the job store decides what runs (a message for a job
    that is not queued is a no-op), and the job leases, not the broker's visibility
    timeout, bring back the jobs of a dead worker (the timeout is only a backstop)."""
    s = settings or get_settings()
    celery = Celery("ddpm", broker=s.broker_url, include=list(include))
    transport: dict = {
        # Above the longest job: an unacked message is redelivered after this long.
        "visibility_timeout": s.visibility_timeout,
        "global_keyprefix": s.key_prefix,
    }
    transport |= broker_options(s)  # with Sentinel: the master's name, the sentinels' auth
    if s.restore_interval:
        transport |= {"unacked_restore_interval": s.restore_interval, "unacked_restore_throttle": 1}
    celery.conf.update(
        task_default_queue=GEN_QUEUE,
        task_queues=(Queue(GEN_QUEUE), Queue(TRAIN_QUEUE)),
        task_routes={GENERATE_TASK: {"queue": GEN_QUEUE}, TRAIN_TASK: {"queue": TRAIN_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # On SIGTERM, running jobs get this long to finish before the worker stops
        # (docker-compose's stop_grace_period must be longer).
        worker_soft_shutdown_timeout=s.soft_shutdown_timeout,
        worker_enable_soft_shutdown_on_idle=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        # No task has a rate limit: skip the token-bucket bookkeeping of every message.
        worker_disable_rate_limits=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    )
    return celery


def pending_task_ids(
    client: redis.Redis, settings: Settings, queue: str, delivered_after: float | None = None
) -> set[str]:
    """Ids of the tasks whose message waits in the broker list of ``queue`` or was delivered
    and not yet acked (any queue). Bounded by the queue limits; used to find queued jobs
    whose message was lost (an API that died between storing a job and sending it, or
    writes lost by a Redis crash or failover).

    ``delivered_after`` (epoch seconds): a delivered message counts only if it was
    delivered since. A worker claims its job as soon as it receives the message, so a
    still-queued job whose message was delivered long ago lost its claim (its worker died
    in between, or a failover lost the claim): that message is orphaned until the
    visibility timeout, and does not count."""
    prefix = settings.key_prefix
    keys = [prefix + queue] + [f"{prefix}{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS]
    raw: list[Any] = []
    for key in keys:
        raw += client.lrange(key, 0, -1)
    ids = {_task_id(m) for m in raw}
    delivered: dict[Any, float] = {}
    if delivered_after is not None:
        delivered = dict(client.zrange(prefix + "unacked_index", 0, -1, withscores=True))
    for tag, entry in client.hgetall(prefix + "unacked").items():
        if delivered_after is not None and delivered.get(tag, 0.0) < delivered_after:
            continue
        try:
            ids.add(_task_id(json.loads(entry)[0]))
        except (ValueError, IndexError, TypeError):
            continue
    ids.discard(None)
    return ids  # type: ignore[return-value]


def _task_id(message: Any) -> str | None:
    try:
        payload = json.loads(message) if isinstance(message, str | bytes) else message
        return payload["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
