"""What one API process holds: the store, the registry, the broker, Redis clients and
the metrics registry, built once by :func:`app.api.main.create_app` and handed to routes
by :mod:`app.api.deps`."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from celery import Celery
from prometheus_client import CollectorRegistry

from app.api.metrics import StoreCollector
from app.api.streaming.aredis import AsyncRedis
from app.api.streaming.events import StreamSlots
from app.api.streaming.finish_watch import FinishWatch
from app.core.checkpoints import Registry, make_registry
from app.core.queue import TaskMessages, make_celery
from app.core.settings import Settings
from app.core.storage.results import ResultStore, make_result_store, object_store_of
from app.core.store import JobStore, connect, redis_target, store_from_settings

__all__ = ["ApiState"]


@dataclass
class ApiState:
    """The API's long-lived objects (``app.state.api``)."""

    settings: Settings
    store: JobStore
    bin_redis: redis.Redis
    aredis: AsyncRedis
    finish_watch: FinishWatch
    stream_slots: StreamSlots
    registry: Registry
    celery: Celery
    task_messages: TaskMessages
    metrics: CollectorRegistry
    result_stores: dict[str, ResultStore] = field(default_factory=dict)

    @classmethod
    def build(cls, s: Settings, celery: Celery | None = None) -> ApiState:
        store = store_from_settings(s)
        bin_redis = connect(s, decode=False)
        # Event streams read Redis on the event loop: a waiting stream holds no thread, only
        # one async connection (its blocking XREAD); hence the pool's size.
        aredis = AsyncRedis(
            redis_target(s),
            read_timeout=s.stream_keepalive + 10,
            max_connections=s.max_streams + 64,
        )
        celery = celery or make_celery(s)
        metrics = CollectorRegistry(auto_describe=False)
        metrics.register(StoreCollector(store, s.metrics_checkpoints))
        return cls(
            settings=s,
            store=store,
            bin_redis=bin_redis,
            aredis=aredis,
            finish_watch=FinishWatch(aredis, store.finished_channel()),
            stream_slots=StreamSlots(s.max_streams, s.max_streams_per_client),
            registry=make_registry(s, bin_redis),
            celery=celery,
            task_messages=TaskMessages(celery, s.key_prefix),
            metrics=metrics,
        )

    def results(self, kind: str) -> ResultStore:
        """The result store of ``kind`` (each job records where its results went); one
        per kind, made on first use."""
        if kind not in self.result_stores:
            s = self.settings
            objects = object_store_of(s) if kind == "s3" else None
            self.result_stores[kind] = make_result_store(
                kind, s.data_dir, self.bin_redis, s.key_prefix, s.job_ttl, objects
            )
        return self.result_stores[kind]

    async def aclose(self) -> None:
        await self.finish_watch.aclose()
        await self.aredis.aclose()
