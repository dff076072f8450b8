"""Celery task bodies: ``ddpm.generate`` (queue gen) and ``ddpm.train`` (queue train).

The job hash in Redis is the source of truth; a Celery message only says "job X may be
ready to run". Both tasks are acked late, after the outcome is recorded, and are no-ops
for a job that is not queued (see :mod:`worker.jobrun`): so a message delivered twice, or
re-sent by the reaper, never runs a job twice.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from app.core.jobs.names import GENERATE_TASK, TRAIN_TASK
from app.core.logs import log_event
from app.core.store import redis_target
from worker.celery_app import app as celery_app
from worker.generate.job import generate_body
from worker.jobrun import run_job
from worker.runtime import get_runtime
from worker.train.job import train_body

__all__ = ["generate", "train"]

log = logging.getLogger("ddpm.worker")


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    queues: list[str] = []
    try:
        queues = sorted(sender.app.amqp.queues.consume_from or [])
    except Exception:  # noqa: BLE001 - best effort
        queues = [q for q in os.environ.get("DDPM_WORKER_QUEUES", "").split(",") if q]
    # Celery's own per-task lines ("received", "succeeded in"), built for every message and
    # then dropped (no handler): the job's own log lines say the same, with the job id.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rt = get_runtime(getattr(sender, "hostname", None), queues)
    rt.consumer = sender
    rt.start_background()
    if "gen" in queues:
        rt.engine()  # import torch and claim the device now, not in the first job
        # Blocks consuming until the default model is loaded and tuned: a job arriving
        # meanwhile waits in the queue, where another worker may take it.
        rt.warm_default()
    log_event(
        log,
        "worker ready",
        worker=rt.name,
        queues=",".join(queues),
        redis=redis_target(rt.settings).describe(),
        replicated_ack=rt.settings.replicated_ack,
    )


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    get_runtime().shutdown()


@celery_app.task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def generate(job_id: str) -> str | None:
    """Run generation job ``job_id`` through the engine and store its images."""
    return run_job(get_runtime(), "generate", job_id, generate_body)


@celery_app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train(job_id: str) -> str | None:
    """Run training job ``job_id`` and publish the result as a new checkpoint version."""
    return run_job(get_runtime(), "train", job_id, train_body)
