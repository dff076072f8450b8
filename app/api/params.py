"""Path and header parameters that several routes take, declared once."""

from __future__ import annotations

from fastapi import Path

from app.core.jobs.ids import JOB_ID_RE

__all__ = ["JobId", "IDEM_RE"]

JobId = Path(..., pattern=JOB_ID_RE, description="job id (a UUID)")
# An Idempotency-Key header: what a client may send (scoped per client and endpoint).
IDEM_RE = r"^[A-Za-z0-9._:-]{1,128}$"
