"""Why the job system refuses a request. No web framework here: each class names the HTTP
status a front end answers it with (:mod:`app.api.errors` does), and the worker reports
them as a job's error."""

from __future__ import annotations

__all__ = ["ServiceError", "InvalidInput", "NotFoundError", "ConflictError", "LimitReached"]


class ServiceError(Exception):
    """Base: ``message`` is fit for a client (no server paths)."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.field: str | None = None
        self.headers: dict[str, str] = {}


class InvalidInput(ServiceError):
    """A field of the request is invalid; ``field`` names it (dotted: ``options.lr``)."""

    status = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(ServiceError):
    """What the request names does not exist (a job, a checkpoint, a result)."""

    status = 404


class ConflictError(ServiceError):
    """The resource is in a state that does not allow the request (a finished job)."""

    status = 409


class LimitReached(ServiceError):
    """A queue or per-client limit: retry after ``retry_after`` seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}
