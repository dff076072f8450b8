"""The vocabulary of jobs: kinds, statuses, the broker queues and Celery task names."""

from __future__ import annotations

from typing import Literal

__all__ = [
    "KINDS",
    "JobKind",
    "JobStatus",
    "JOB_STATUSES",
    "TERMINAL",
    "GEN_QUEUE",
    "TRAIN_QUEUE",
    "QUEUE_OF",
    "GENERATE_TASK",
    "TRAIN_TASK",
    "TASK_OF",
    "QUEUE_OF_TASK",
]

JobKind = Literal["generate", "train"]
KINDS: tuple[str, ...] = ("generate", "train")
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

GEN_QUEUE = "gen"
TRAIN_QUEUE = "train"
# The store's queue and lease sets, and the broker queue, of each kind of job.
QUEUE_OF = {"generate": GEN_QUEUE, "train": TRAIN_QUEUE}
GENERATE_TASK = "ddpm.generate"
TRAIN_TASK = "ddpm.train"
TASK_OF = {"generate": GENERATE_TASK, "train": TRAIN_TASK}
QUEUE_OF_TASK = {GENERATE_TASK: GEN_QUEUE, TRAIN_TASK: TRAIN_QUEUE}
