"""Jobs on the broker: the Celery app's configuration (:mod:`~app.core.queue.broker`), the
messages the store pushes with a job (:mod:`~app.core.queue.messages`) and kombu's
patches for workers (:mod:`~app.core.queue.kombu_patches`)."""

from app.core.queue.broker import make_celery, pending_task_ids
from app.core.queue.messages import TaskMessages

__all__ = ["make_celery", "pending_task_ids", "TaskMessages"]
