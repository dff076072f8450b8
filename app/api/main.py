"""The FastAPI application: ``create_app(settings)``; ``app`` for uvicorn
(``app.api.main:app``). No torch here: the registry reads JSON only and work is
enqueued by task name."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from celery import Celery
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.api.errors import install_handlers
from app.api.fastpath import FastReads
from app.api.middleware import BodyLimitMiddleware
from app.api.openapi import install as install_openapi
from app.api.openapi import operation_id
from app.api.routes import admin, checkpoints, health, jobs, previews, ui
from app.api.services.deadlines import DeadlineSweeper
from app.api.services.webhooks import start_dispatcher
from app.api.state import ApiState
from app.core.logs import configure_logging, log_event
from app.core.settings import Settings, get_settings
from app.core.store import redis_target
from app.core.tracing import setup_tracing, shutdown_tracing

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, celery: Celery | None = None) -> FastAPI:
    """Build the API for ``settings`` (default: the environment)."""
    s = settings or get_settings()
    configure_logging(s.log_level, s.log_format)
    setup_tracing("ddpm-api")
    state = ApiState.build(s, celery)
    log_event(
        logging.getLogger("ddpm.api"),
        "job store",
        redis=redis_target(s).describe(),
        replicated_ack=s.replicated_ack,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = start_dispatcher(s, state.store) if s.webhook_dispatcher else None
        sweeper = DeadlineSweeper(state.store, s.reaper_interval).start()
        yield
        sweeper.stop()
        if dispatcher is not None:
            dispatcher.stop()
        await state.aclose()
        shutdown_tracing()

    api = _Api(
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        title="ddpm-service",
        version="0.1.0",
        description="DDPM image generation with a job queue. Jobs run on Celery workers; "
        "poll `GET /jobs/{id}` or stream `GET /jobs/{id}/events`.",
    )
    api.state.api = state
    install_handlers(api)
    for module in (jobs, checkpoints, admin, health, previews, ui):
        api.include_router(module.router)
    api.add_middleware(BodyLimitMiddleware, limit=s.max_body_bytes)
    install_openapi(api, s)
    api.fast_reads = FastReads(state)
    return api


class _Api(FastAPI):
    """FastAPI with :class:`app.api.fastpath.FastReads` in front of its whole stack: a
    successful poll or download is answered there, everything else as FastAPI would."""

    fast_reads: FastReads | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_reads
        if fast is None or not await fast.serve(scope, receive, send):
            await super().__call__(scope, receive, send)


def __getattr__(name: str) -> Any:
    # ``app.api.main:app`` for uvicorn, built on first access so that importing is cheap.
    if name == "app":
        globals()["app"] = create_app()
        return globals()["app"]
    raise AttributeError(name)
