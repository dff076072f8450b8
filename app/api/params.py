"""Path and header parameters that several routes take, declared once."""

from __future__ import annotations

from fastapi import Header, Path

from app.core.jobs.ids import JOB_ID_RE

__all__ = ["JobId", "IDEM_RE", "TRACEPARENT"]

JobId = Path(..., pattern=JOB_ID_RE, description="job id (a UUID)")
# An Idempotency-Key header: what a client may send (scoped per client and endpoint).
IDEM_RE = r"^[A-Za-z0-9._:-]{1,128}$"

# W3C trace context (https://www.w3.org/TR/trace-context/): an invalid one is ignored, as
# the recommendation asks, so no pattern here; the job's trace continues a valid one.
TRACEPARENT = Header(
    None,
    description="W3C `traceparent`: with tracing on (OTEL_* variables), the job's trace "
    "continues it (docs/operations.md, Tracing)",
    max_length=512,
)
