"""The Celery app: Redis broker, queues ``gen`` and ``train``, task names.

The API enqueues by name (``send_task``); task bodies live in ``worker.tasks``,
which only the worker imports (``include``). Run a worker with
``celery -A app.queue worker -P threads -Q gen``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from .settings import Settings, get_settings

__all__ = [
    "GENERATE_TASK",
    "TRAIN_TASK",
    "GEN_QUEUE",
    "TRAIN_QUEUE",
    "TASK_OF",
    "QUEUE_OF_TASK",
    "make_celery",
    "TaskMessages",
    "pending_task_ids",
    "app",
]

GENERATE_TASK = "ddpm.generate"
TRAIN_TASK = "ddpm.train"
GEN_QUEUE = "gen"
TRAIN_QUEUE = "train"
TASK_OF = {"generate": GENERATE_TASK, "train": TRAIN_TASK}
QUEUE_OF_TASK = {GENERATE_TASK: GEN_QUEUE, TRAIN_TASK: TRAIN_QUEUE}
# kombu's Redis transport keeps priority levels in lists named queue + sep + level.
_PRIORITY_SEP, _PRIORITY_STEPS = "\x06\x16", (3, 6, 9)


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings``: late acks, prefetch 1, keys under our prefix.

    Messages only wake workers up: the job store decides what runs (a message for a job
    that is not queued is a no-op), and the job leases, not the broker's visibility
    timeout, bring back the jobs of a dead worker (the timeout is only a backstop)."""
    s = settings or get_settings()
    celery = Celery("ddpm", broker=s.broker_url, include=["worker.tasks"])
    transport: dict = {
        # Above the longest job: an unacked message is redelivered after this long.
        "visibility_timeout": s.visibility_timeout,
        "global_keyprefix": s.key_prefix,
    }
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


class _Capture:
    """A stand-in producer: records what Celery would publish, sends nothing."""

    def __init__(self) -> None:
        self.published: list[tuple[Any, dict[str, Any]]] = []

    @property
    def connection(self) -> _Capture:
        return self

    @contextlib.contextmanager
    def _reraise_as_library_errors(self) -> Iterator[None]:
        yield

    def publish(self, body: Any, **kw: Any) -> None:
        self.published.append((body, kw))


class TaskMessages:
    """The broker message of a job's task, as ``celery.send_task`` would LPUSH it through
    kombu's Redis transport, built here so that the job store writes the job and its
    message in ONE atomic step (see :meth:`app.store.JobStore.create`).

    Celery itself builds a template per task name (its routing, headers and properties, via
    ``send_task`` with a producer that only records); each job then fills in its id. This
    saves kombu's publish path (half of a submission's time: a Redis client, a declare, a
    round trip) and closes the gap between storing a job and sending its message. A task
    whose route is not a plain queue on the default exchange, or that has a priority or
    compression, is left to :meth:`send` (``encode`` returns None)."""

    def __init__(self, celery: Celery, prefix: str) -> None:
        self.celery = celery
        self.prefix = prefix
        self._templates: dict[str, tuple[str, dict[str, Any], Any] | None] = {}

    def _template(self, name: str) -> tuple[str, dict[str, Any], Any] | None:
        if name not in self._templates:
            cap = _Capture()
            self.celery.send_task(name, args=[_PLACEHOLDER], task_id=_PLACEHOLDER, producer=cap)
            (body, kw) = cap.published[0]
            plain = (
                kw.get("exchange") == ""
                and kw.get("serializer") == "json"
                and not kw.get("compression")
                and not kw.get("priority")
                and not kw.get("expiration")
            )
            if not plain:
                self._templates[name] = None
            else:
                props = {
                    k: v
                    for k, v in kw.items()
                    if k in ("correlation_id", "reply_to", "delivery_mode")
                }
                self._templates[name] = (
                    kw["routing_key"],
                    {"headers": kw["headers"], **props},
                    body,
                )
        return self._templates[name]

    def encode(self, name: str, job_id: str) -> tuple[str, str] | None:
        """(broker list key, message JSON) of task ``name`` for job ``job_id`` (the task id
        and only argument), or None when it must go through :meth:`send`."""
        t = self._template(name)
        if t is None:
            return None
        queue, tmpl, (_, kwargs, embed) = t
        headers = tmpl["headers"] | {"id": job_id, "root_id": job_id, "argsrepr": repr([job_id])}
        body = json.dumps([[job_id], kwargs, embed]).encode()
        message = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": job_id,
                "reply_to": tmpl.get("reply_to"),
                "delivery_mode": tmpl.get("delivery_mode", 2),
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return self.prefix + queue, json.dumps(message)

    def send(self, name: str, job_id: str) -> None:
        """Publish through Celery and kombu (replays, re-sends)."""
        self.celery.send_task(name, args=[job_id], task_id=job_id)


_PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


def pending_task_ids(client: redis.Redis, settings: Settings, queue: str) -> set[str]:
    """Ids of the tasks whose message waits in the broker list of ``queue`` or was delivered
    and not yet acked (any queue). Bounded by the queue limits; used to find queued jobs
    whose message was lost (an API that died between storing a job and sending it, or
    writes lost by a Redis crash)."""
    prefix = settings.key_prefix
    keys = [prefix + queue] + [f"{prefix}{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS]
    raw: list[Any] = []
    for key in keys:
        raw += client.lrange(key, 0, -1)
    ids = {_task_id(m) for m in raw}
    for entry in client.hvals(prefix + "unacked"):
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


_tolerate_detached_transport()
_reuse_sync_client()
app = make_celery()
