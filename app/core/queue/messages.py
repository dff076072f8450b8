"""The broker message of a job's task, built once per task name by Celery itself, so that
the job store can push a job and its message in one atomic step."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

from celery import Celery

__all__ = ["TaskMessages"]


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
    message in ONE atomic step (see :meth:`app.core.store.JobStore.create`).

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
