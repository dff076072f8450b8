"""Errors as the API answers them: every error body is JSON, 422 lists the fields.

Routes raise :class:`HttpError`; the job system raises :mod:`app.core.errors`, mapped to
a status here; a store or broker that is down is a 503 with ``Retry-After``."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.routing import allowed_methods
from app.core.errors import ServiceError
from app.core.logs import log_event
from app.core.storage.objstore import ObjectStoreError
from app.core.store import NotReplicated, is_transient

__all__ = ["HttpError", "install_handlers"]

log = logging.getLogger("ddpm.api")

_FASTAPI_BODY_ERROR = "There was an error parsing the body"
_RETRY = {"Retry-After": "5"}


class HttpError(Exception):
    """An error with an HTTP status; ``field`` names the offending field (422)."""

    def __init__(
        self, status: int, message: str, field: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    @classmethod
    def of(cls, exc: ServiceError) -> HttpError:
        """The HTTP form of a job-system error."""
        return cls(exc.status, exc.message, exc.field, exc.headers)


def _body(exc: HttpError) -> dict[str, Any]:
    if exc.field or exc.status == 422:  # 422 always lists fields (the declared body)
        return {"detail": [{"field": exc.field or "request", "reason": exc.message}]}
    return {"detail": exc.message}


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_handlers(api: FastAPI) -> None:
    """The exception handlers that give every error its documented body."""

    @api.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> JSONResponse:
        return JSONResponse(_body(exc), exc.status, headers=exc.headers)

    @api.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        http = HttpError.of(exc)
        return JSONResponse(_body(http), http.status, headers=http.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # loc is ("body", byte offset)
                pos = e.get("loc", ("body", "?"))[-1]
                errors.append({"field": "body", "reason": f"invalid JSON at byte {pos}"})
            else:
                field = _field(e.get("loc", ()))
                errors.append({"field": field, "reason": e.get("msg", "invalid")})
        return JSONResponse({"detail": errors}, 422)

    @api.exception_handler(NotReplicated)
    async def _not_replicated(request: Request, exc: NotReplicated) -> JSONResponse:
        job_id = getattr(exc, "job_id", None)
        log_event(log, "write not replicated", logging.WARNING, job_id=job_id, error=str(exc),
                  path=request.url.path)  # fmt: skip
        return JSONResponse(
            {
                "detail": f"job {job_id} was stored, but no replica of the job store "
                "confirmed it in time, so it is not acknowledged: it may run, or be lost if "
                "the store's primary fails now. Retry with the same Idempotency-Key to get "
                "this job (not a new one)"
            },
            503,
            headers=_RETRY,
        )

    @api.exception_handler(redis.exceptions.ConnectionError)
    @api.exception_handler(redis.exceptions.TimeoutError)
    @api.exception_handler(OperationalError)
    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        log_event(log, "store unreachable", logging.WARNING, error=str(exc), path=request.url.path)
        return JSONResponse(
            {"detail": "the job store or broker is unreachable"}, 503, headers=_RETRY
        )

    @api.exception_handler(redis.exceptions.ResponseError)
    async def _redis_refused(request: Request, exc: redis.exceptions.ResponseError) -> JSONResponse:
        if not is_transient(exc):  # a bug, not a condition of the store
            raise exc
        log_event(log, "store refused a write", logging.WARNING, error=str(exc))
        return JSONResponse(
            {"detail": "the job store cannot take writes now (full or restarting)"},
            503,
            headers=_RETRY,
        )

    @api.exception_handler(ObjectStoreError)
    async def _objects_unavailable(request: Request, exc: ObjectStoreError) -> JSONResponse:
        log_event(log, "object store failed", logging.WARNING, error=str(exc))
        return JSONResponse({"detail": "the object store is unreachable"}, 503, headers=_RETRY)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
            # FastAPI's answer to a JSON body it cannot decode (e.g. invalid UTF-8): the
            # same 422 as any other malformed JSON.
            reason = "the body is not valid JSON (UTF-8)"
            return JSONResponse({"detail": [{"field": "body", "reason": reason}]}, 422)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(api, request.url.path))
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=headers)
