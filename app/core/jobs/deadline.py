"""A job's deadline: ``deadline_seconds`` in a request, or a ``Cancel-After`` header (as
Replicate's: seconds, or a duration such as ``90s``, ``5m``, ``1h30m``)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import InvalidInput

__all__ = ["MAX_DEADLINE", "DeadlineFields", "parse_cancel_after", "job_deadline"]

MAX_DEADLINE = 7 * 86400.0
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


class DeadlineFields(BaseModel):
    """``deadline_seconds`` of a job request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    deadline_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_DEADLINE,
        description="seconds after submission by which the job must have started; a job "
        "still queued then never runs (canceled, reason deadline), a running one stops at "
        "its next step. The Cancel-After header says the same; the earlier one holds",
    )


def parse_cancel_after(value: str) -> float:
    """Seconds of a ``Cancel-After`` value; InvalidInput (422) when it is none."""
    v = value.strip()
    try:
        seconds = float(v)
    except ValueError:
        m = _DURATION.fullmatch(v)
        if not v or m is None:
            raise InvalidInput(
                "Cancel-After must be seconds or a duration like 90s, 5m, 1h30m", "Cancel-After"
            ) from None
        h, mi, s = (float(x) if x else 0.0 for x in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if not 0 < seconds <= MAX_DEADLINE:
        raise InvalidInput(
            f"Cancel-After must lie in (0, {MAX_DEADLINE:.0f}] seconds", "Cancel-After"
        )
    return seconds


def job_deadline(body_seconds: float | None, cancel_after: str | None) -> float | None:
    """The job's deadline in seconds: the earlier of the field and the header."""
    given = [body_seconds] if body_seconds else []
    if cancel_after is not None:
        given.append(parse_cancel_after(cancel_after))
    return min(given) if given else None
