"""Job ids: UUID4 strings, and the one pattern that checks them everywhere (routes, result
paths, the reaper's deletions)."""

from __future__ import annotations

import re
import uuid

__all__ = ["JOB_ID_RE", "new_job_id", "is_job_id"]

JOB_ID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_JOB_ID = re.compile(JOB_ID_RE)


def new_job_id() -> str:
    return str(uuid.uuid4())


def is_job_id(value: str) -> bool:
    """Whether ``value`` is a job id (so it is safe in a key or a path)."""
    return _JOB_ID.fullmatch(value) is not None
