"""The errors the client raises, and what an error answer says (its detail, Retry-After)."""

from __future__ import annotations

import email.utils
import time
from typing import Any, Protocol

import httpx


class ClientError(Exception):
    """Base class of the errors this client raises."""


class ApiError(ClientError):
    """An HTTP error answer. ``field`` and ``reason`` come from the first entry of a 422
    body ``{"detail": [{"field", "reason"}]}``; other errors have ``field`` None and the
    message as ``reason``. ``errors`` holds every (field, reason) pair."""

    def __init__(
        self,
        status: int,
        field: str | None,
        reason: str,
        errors: list[tuple[str, str]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.field = field
        self.reason = reason
        self.errors = errors or ([(field, reason)] if field else [])
        self.retry_after = retry_after
        super().__init__(
            f"HTTP {status}: {field}: {reason}" if field else f"HTTP {status}: {reason}"
        )

    @classmethod
    def from_response(cls, resp: httpx.Response) -> ApiError:
        """The error that an answer (read in full) describes."""
        try:
            detail = resp.json().get("detail")
        except (ValueError, AttributeError):
            detail = resp.text.strip()[:200] or resp.reason_phrase
        errors: list[tuple[str, str]] = []
        if isinstance(detail, list):
            for e in detail:
                if isinstance(e, dict):
                    errors.append((str(e.get("field", "?")), str(e.get("reason", e))))
            if errors:
                return cls(resp.status_code, errors[0][0], errors[0][1], errors)
        return cls(resp.status_code, None, str(detail), retry_after=retry_after(resp))


class ServiceUnreachable(ClientError):
    """The service could not be reached (after the retries)."""

    def __init__(self, url: str, cause: Exception) -> None:
        self.url = url
        self.cause = cause
        super().__init__(f"service unreachable at {url}: {type(cause).__name__}: {cause}")


class _Job(Protocol):
    """What :class:`JobFailed` reads of a job (a ``Job`` or an ``AsyncJob``)."""

    @property
    def id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def error(self) -> dict[str, Any] | None: ...


class JobFailed(ClientError):
    """The job ended ``failed`` (or ``canceled``, :class:`JobCanceled`); ``error_type``
    and ``message`` are the job's ``error``, ``job`` the job itself."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        err = job.error or {}
        self.status = job.status
        self.error_type = str(err.get("type") or "Error")
        self.message = str(err.get("message") or "")
        what = (
            self.message if self.error_type == "Canceled" else f"{self.error_type}: {self.message}"
        )
        super().__init__(f"job {job.id} {job.status}: {what}")


class JobCanceled(JobFailed):
    """The job was canceled."""


def retry_after(resp: httpx.Response) -> float | None:
    """The answer's ``Retry-After`` in seconds from now (seconds or an HTTP date), if any."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
