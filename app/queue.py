"""The Celery app: Redis broker, queues ``gen`` and ``train``, task names.

The API enqueues by name (``send_task``); task bodies live in ``worker.tasks``,
which only the worker imports (``include``). Run a worker with
``celery -A app.queue worker -P threads -Q gen``.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from .settings import Settings, get_settings

__all__ = ["GENERATE_TASK", "TRAIN_TASK", "GEN_QUEUE", "TRAIN_QUEUE", "make_celery", "app"]

GENERATE_TASK = "ddpm.generate"
TRAIN_TASK = "ddpm.train"
GEN_QUEUE = "gen"
TRAIN_QUEUE = "train"


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings``: late acks and redelivery for generation, prefetch 1."""
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


app = make_celery()
