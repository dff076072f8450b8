"""The workers' Celery app: ``celery -A worker.celery_app worker|inspect|flower``.

Applies the kombu patches workers need (:mod:`app.core.queue.kombu_patches`) and names
the task bodies (:mod:`worker.tasks`), which Celery imports when a worker starts."""

from __future__ import annotations

from app.core.queue import kombu_patches, make_celery

__all__ = ["app"]

kombu_patches.apply()
app = make_celery(include=["worker.tasks"])
