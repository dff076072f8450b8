"""Per-process worker state: settings, store, registry, the engine, the monitor, and the
background threads (heartbeat and reaper)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import redis

from app.core.checkpoints import Registry, make_registry
from app.core.logs import configure_logging, log_event
from app.core.settings import Settings, get_settings
from app.core.stats import BATCH_BUCKETS
from app.core.storage.results import ResultStore, make_result_store, object_store_of
from app.core.store import JobStore, connect, store_from_settings
from app.core.tracing import setup_tracing, shutdown_tracing

__all__ = ["Runtime", "get_runtime"]

log = logging.getLogger("ddpm.worker")

_RUN = 1  # celery.bootsteps.RUN: the consumer's blueprint is running


@dataclass
class Runtime:
    """What the task bodies of one worker process share."""

    settings: Settings
    store: JobStore
    bin_redis: redis.Redis
    registry: Registry
    name: str
    queues: list[str] = field(default_factory=list)
    consumer: Any = None  # Celery's consumer, to tell whether it is consuming
    _engine: Any = None
    _monitor: Any = None
    _celery: Any = None
    _results: dict[str, ResultStore] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def results(self, kind: str) -> ResultStore:
        store = self._results.get(kind)
        if store is None:
            s = self.settings
            objects = object_store_of(s) if kind == "s3" else None
            store = make_result_store(
                kind, s.data_dir, self.bin_redis, s.key_prefix, s.job_ttl, objects
            )
            self._results[kind] = store
        return store

    @property
    def celery(self) -> Any:
        """A Celery app for sending tasks (re-queued jobs) with this runtime's settings."""
        with self._lock:
            if self._celery is None:
                from app.core.queue import make_celery

                self._celery = make_celery(self.settings)
            return self._celery

    def monitor(self) -> Any:
        """The process's job monitor (lease renewal, progress writes, cancel checks)."""
        with self._lock:
            if self._monitor is None:
                from worker.monitor import JobMonitor

                self._monitor = JobMonitor(self.store, self.settings.progress_interval)
            return self._monitor

    def engine(self) -> Any:
        """The process's generation engine, started on first use (it owns the device)."""
        with self._lock:
            if self._engine is None:
                from ddpm_core.acceleration import FastOptions
                from worker.generate.engine import Engine

                s = self.settings
                fast = FastOptions(
                    channels_last=s.channels_last, compile=s.compile, compile_mode=s.compile_mode
                )
                self._engine = Engine(
                    s.device,
                    s.max_batch,
                    s.model_cache_size,
                    s.progress_interval,
                    threads=s.torch_threads,
                    fast=fast,
                    autocast=s.autocast,
                    model_limits=s.model_limits,
                    preview_interval=s.preview_interval,
                    knee_fraction=s.knee_fraction,
                    starve_after=s.starve_after,
                ).start()
            return self._engine

    def warm_default(self) -> None:
        """Load and tune the default checkpoint in the engine now (``warm_checkpoint``):
        the first job then waits for neither. Best effort: a missing checkpoint is
        logged, and jobs report it themselves."""
        s = self.settings
        if not s.warm_checkpoint:
            return
        try:
            ckpt = self.registry.resolve(s.default_checkpoint)
            path = self.registry.materialize(ckpt)
            self.engine().warm(str(path), ckpt.ref)
        except Exception as exc:  # noqa: BLE001 - a warm-up never stops the worker
            log_event(
                log,
                "warm-up skipped",
                logging.WARNING,
                checkpoint=s.default_checkpoint,
                error=str(exc),
            )
            return
        log_event(log, "warm-up done", checkpoint=ckpt.ref, models=self.engine().info()["models"])

    def consuming(self) -> bool:
        """Whether Celery's consumer is connected to the broker and running."""
        c = self.consumer
        if c is None:
            return False
        blueprint = getattr(c, "blueprint", None)
        return (
            getattr(c, "connection", None) is not None and getattr(blueprint, "state", None) == _RUN
        )

    def heartbeat_once(self) -> None:
        info: dict = {
            "queues": self.queues,
            "pid": os.getpid(),
            "device": self.settings.device,
            "consuming": self.consuming(),
        }
        eng = self._engine
        if eng is not None:
            info |= eng.info()
            self.store.observe("batch_size", eng.take_batch_sizes(), BATCH_BUCKETS)
            recent = list(eng.batch_sizes)[-1000:]
            if recent:
                info["recent_batch_mean"] = round(sum(recent) / len(recent), 3)
                info["recent_batch_max"] = max(recent)
        self.store.heartbeat(self.name, info, self.settings.heartbeat_ttl)

    def start_background(self) -> None:
        """Start the heartbeat and the reaper (once)."""
        from worker.reaper import Reaper

        with self._lock:
            if self._threads:
                return
            kinds = ["disk"] + (["s3"] if self.settings.object_store else [])
            reaper = Reaper(self.store, None, self.settings, [self.results(k) for k in kinds])
            hb_every = max(0.5, min(2.0, self.settings.heartbeat_ttl / 4))
            self._threads = [
                threading.Thread(
                    target=self._every,
                    args=("heartbeat", hb_every, self.heartbeat_once),
                    name="ddpm-heartbeat",
                    daemon=True,
                ),
                threading.Thread(
                    target=self._every,
                    args=("reaper", self.settings.reaper_interval, reaper.tick),
                    name="ddpm-reaper",
                    daemon=True,
                ),
            ]
        reaper.celery = self.celery
        for t in self._threads:
            t.start()

    def _every(self, what: str, interval: float, fn: Any) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                fn()
                failing = False
            except redis.RedisError as exc:
                if not failing:  # say it once per outage
                    log_event(log, f"{what} failed", logging.WARNING, error=repr(exc))
                failing = True
            except Exception as exc:  # noqa: BLE001 - keep the thread alive
                log_event(log, f"{what} failed", logging.ERROR, error=repr(exc))
            self._stop.wait(interval)

    def shutdown(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.store.remove_heartbeat(self.name)
        eng = self._engine
        if eng is not None:
            eng.stop()
        shutdown_tracing()  # export the spans still buffered


_runtime: Runtime | None = None
_rt_lock = threading.Lock()


def get_runtime(hostname: str | None = None, queues: list[str] | None = None) -> Runtime:
    """The process's runtime (created on first call)."""
    global _runtime
    with _rt_lock:
        if _runtime is None:
            s = get_settings()
            configure_logging(s.log_level, s.log_format)
            setup_tracing("ddpm-worker")
            name = f"{hostname or socket.gethostname()}:{os.getpid()}"
            bin_redis = connect(s, decode=False)
            registry = make_registry(s, bin_redis)
            _runtime = Runtime(s, store_from_settings(s), bin_redis, registry, name)
        if queues:
            _runtime.queues = queues
        return _runtime
