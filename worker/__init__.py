"""The Celery side: task bodies (:mod:`worker.tasks`), the generation engine
(:mod:`worker.generate`), training jobs (:mod:`worker.train`), and the per-process
runtime, lease monitor and reaper."""
