"""The FastAPI application: ``create_app(settings)``; ``app`` for uvicorn (``app.main:app``).

No torch here (the API image carries no PyTorch): the registry reads JSON only
and work is enqueued by task name.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .jobs import ApiError
from .logs import configure_logging, log_event
from .metrics import StoreCollector
from .objstore import ObjectStoreError
from .queue import make_celery
from .registry import make_registry
from .routes import admin, checkpoints, health, jobs
from .settings import Settings, get_settings
from .store import connect, is_transient, store_from_settings

__all__ = ["create_app"]

log = logging.getLogger("ddpm.api")


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for request bodies above ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await self._reject(send)
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        resp = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, 413)
        await resp({"type": "http"}, None, send)  # type: ignore[arg-type]


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def create_app(settings: Settings | None = None, celery: Celery | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: the environment)."""
    s = settings or get_settings()
    configure_logging(s.log_level, s.log_format)
    api = FastAPI(
        title="ddpm-service",
        version="0.1.0",
        description="DDPM image generation with a job queue. Jobs run on Celery workers; "
        "poll `GET /jobs/{id}` or stream `GET /jobs/{id}/events`.",
    )
    url = s.broker_url
    api.state.settings = s
    api.state.store = store_from_settings(s)
    api.state.bin_redis = connect(url, decode=False)
    api.state.registry = make_registry(s, api.state.bin_redis)
    api.state.celery = celery or make_celery(s)
    api.state.metrics = CollectorRegistry(auto_describe=False)
    api.state.metrics.register(StoreCollector(api.state.store))

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.message}
        if exc.field:
            body["detail"] = [{"field": exc.field, "reason": exc.message}]
        return JSONResponse(body, exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(e.get("loc", ())), "reason": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, 422)

    @api.exception_handler(redis.exceptions.ConnectionError)
    @api.exception_handler(redis.exceptions.TimeoutError)
    @api.exception_handler(OperationalError)
    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        log_event(log, "store unreachable", logging.WARNING, error=str(exc), path=request.url.path)
        return JSONResponse(
            {"detail": "the job store or broker is unreachable"}, 503, headers={"Retry-After": "5"}
        )

    @api.exception_handler(redis.exceptions.ResponseError)
    async def _redis_refused(request: Request, exc: redis.exceptions.ResponseError) -> JSONResponse:
        if not is_transient(exc):  # a bug, not a condition of the store
            raise exc
        log_event(log, "store refused a write", logging.WARNING, error=str(exc))
        return JSONResponse(
            {"detail": "the job store cannot take writes now (full or restarting)"},
            503,
            headers={"Retry-After": "5"},
        )

    @api.exception_handler(ObjectStoreError)
    async def _objects_unavailable(request: Request, exc: ObjectStoreError) -> JSONResponse:
        log_event(log, "object store failed", logging.WARNING, error=str(exc))
        return JSONResponse(
            {"detail": "the object store is unreachable"}, 503, headers={"Retry-After": "5"}
        )

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    for module in (jobs, checkpoints, admin, health):
        api.include_router(module.router)
    api.add_middleware(BodyLimitMiddleware, limit=s.max_body_bytes)
    return api


def __getattr__(name: str) -> Any:
    # ``app.main:app`` for uvicorn, built on first access so that importing is cheap.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
