"""A job's spans in the worker, continuing the trace its API request started.

``run_job`` opens the job's span when it has claimed it (from the job's ``created_ts``,
with the queue wait and the claim as children) and ends it after the finish; job bodies
add their phases through :func:`current`. With tracing off every call is a no-op.
The generation phases are recorded from the timestamps the job's metrics use, so the
spans add up to ``queue_seconds``, ``wait_seconds`` and ``run_seconds``.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from typing import Any

from app.core import tracing

__all__ = ["JobTrace", "current", "begin"]


class JobTrace:
    """The spans of one attempt of one job (``span`` None: tracing is off)."""

    def __init__(self, span: Any = None) -> None:
        self.span = span

    @property
    def on(self) -> bool:
        return self.span is not None

    def record(self, name: str, start: float, end: float, parent: Any = None, **attrs: Any) -> Any:
        """A finished child span (of ``parent``, default the job's) from ``start`` to ``end``."""
        if self.span is None:
            return None
        return tracing.record_span(name, parent or self.span, start, end, _attrs(attrs))

    def open(self, name: str, start: float, **attrs: Any) -> Any:
        """A child span the caller ends (``span.end(end_time=ns)``)."""
        if self.span is None:
            return None
        return tracing.start_span(name, self.span, start, _attrs(attrs))

    @contextlib.contextmanager
    def phase(self, name: str, **attrs: Any) -> Iterator[None]:
        """A child span around a block."""
        start = time.time()
        try:
            yield
        finally:
            self.record(name, start, time.time(), **attrs)

    def end(self, status: str) -> None:
        if self.span is not None:
            self.span.set_attribute("ddpm.status", status)
            self.span.end()
            self.span = None


_current: contextvars.ContextVar[JobTrace] = contextvars.ContextVar("ddpm_job_trace")
_OFF = JobTrace()


def current() -> JobTrace:
    """The trace of the job this thread runs (a no-op one when none or off)."""
    return _current.get(_OFF)


def begin(
    doc: dict[str, Any], kind: str, job_id: str, attempt: int, claim_start: float, claim_end: float
) -> JobTrace:
    """Open the job's span under the request's (``doc["trace"]``) and make it this
    thread's current trace; a no-op trace when tracing is off."""
    if not tracing.enabled():
        _current.set(_OFF)
        return _OFF
    created = float(doc.get("created_ts") or claim_start)
    started = float(doc.get("started_ts") or claim_end)
    attrs = {"ddpm.job_id": job_id, "ddpm.kind": kind, "ddpm.attempt": attempt}
    checkpoint = (doc.get("request") or {}).get("checkpoint")
    if checkpoint:
        attrs["ddpm.checkpoint"] = str(checkpoint)
    jt = JobTrace(tracing.start_span(f"{kind} job", doc.get("trace"), created, attrs))
    jt.record("queue", created, started)
    jt.record("claim", claim_start, claim_end)
    _current.set(jt)
    return jt


def _attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    return {(k if "." in k else f"ddpm.{k}"): v for k, v in attrs.items() if v is not None}
