"""Per-process worker state: settings, store, registry, the engine, the heartbeat."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import redis

from app.logs import configure_logging, log_event
from app.metrics import BATCH_BUCKETS
from app.registry import Registry
from app.results import ResultStore, make_result_store
from app.settings import Settings, get_settings
from app.store import JobStore, connect

__all__ = ["Runtime", "get_runtime"]

log = logging.getLogger("ddpm.worker")


@dataclass
class Runtime:
    """What the task bodies of one worker process share."""

    settings: Settings
    store: JobStore
    bin_redis: redis.Redis
    registry: Registry
    name: str
    queues: list[str] = field(default_factory=list)
    _engine: object | None = None
    _monitor: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _hb: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    hooks: list = field(default_factory=list)  # called from the heartbeat thread

    def results(self, kind: str) -> ResultStore:
        s = self.settings
        return make_result_store(kind, s.data_dir, self.bin_redis, s.key_prefix, s.job_ttl)

    def monitor(self):
        """The process's job monitor (batched progress writes and cancel checks)."""
        with self._lock:
            if self._monitor is None:
                from .monitor import JobMonitor

                self._monitor = JobMonitor(self.store, self.settings.progress_interval)
            return self._monitor

    def engine(self):
        """The process's generation engine, started on first use (it owns the device)."""
        with self._lock:
            if self._engine is None:
                from ddpm_core.acceleration import FastOptions

                from .engine import Engine

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
                ).start()
            return self._engine

    def heartbeat_once(self) -> None:
        info: dict = {"queues": self.queues, "pid": os.getpid(), "device": self.settings.device}
        eng = self._engine
        if eng is not None:
            info |= eng.info()  # type: ignore[attr-defined]
            sizes = eng.take_batch_sizes()  # type: ignore[attr-defined]
            for size in sizes:
                self.store.observe("batch_size", size, BATCH_BUCKETS)
            recent = list(eng.batch_sizes)[-1000:]  # type: ignore[attr-defined]
            if recent:
                info["recent_batch_mean"] = round(sum(recent) / len(recent), 3)
                info["recent_batch_max"] = max(recent)
        self.store.heartbeat(self.name, info, self.settings.heartbeat_ttl)

    def start_heartbeat(self) -> None:
        with self._lock:
            if self._hb is not None:
                return
            self._hb = threading.Thread(target=self._beat, name="ddpm-heartbeat", daemon=True)
            self._hb.start()

    def _beat(self) -> None:
        interval = max(0.5, min(5.0, self.settings.heartbeat_ttl / 3))
        while not self._stop.is_set():
            try:
                self.heartbeat_once()
                for hook in self.hooks:
                    hook(self)
            except Exception as exc:  # noqa: BLE001 - keep beating through Redis hiccups
                log_event(log, "heartbeat failed", logging.WARNING, error=str(exc))
            self._stop.wait(interval)

    def shutdown(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.store.r.delete(self.store.key("worker", self.name))
        eng = self._engine
        if eng is not None:
            eng.stop()  # type: ignore[attr-defined]


_runtime: Runtime | None = None
_rt_lock = threading.Lock()


def get_runtime(hostname: str | None = None, queues: list[str] | None = None) -> Runtime:
    """The process's runtime (created on first call)."""
    global _runtime
    with _rt_lock:
        if _runtime is None:
            s = get_settings()
            configure_logging(s.log_level, s.log_format)
            url = s.broker_url
            name = f"{hostname or socket.gethostname()}:{os.getpid()}"
            _runtime = Runtime(
                s,
                JobStore(connect(url), s.key_prefix, s.job_ttl, s.events_maxlen),
                connect(url, decode=False),
                Registry(s.data_dir),
                name,
                queues or [],
            )
        elif queues:
            _runtime.queues = queues
        return _runtime


def _uptime() -> float:
    return time.monotonic()
