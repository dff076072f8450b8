"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import StoreDep
from app.api.openapi import errors
from app.api.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready, with the reason"}},
)
def readyz(store: StoreDep) -> JSONResponse:
    """Ready when Redis answers and a generation worker's heartbeat says it is consuming
    from the broker; 503 with the reason otherwise."""
    try:
        store.ping()
        workers = store.workers()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        return JSONResponse({"status": "unavailable", "reason": f"redis unreachable: {exc}"}, 503)
    gen = [w for w in workers if "gen" in (w.get("queues") or [])]
    if not gen:
        return JSONResponse(
            {"status": "unavailable", "reason": "no generation worker heartbeat"}, 503
        )
    if not any(w.get("consuming") for w in gen):
        return JSONResponse(
            {"status": "unavailable", "reason": "no generation worker is consuming"},
            503,
        )
    return JSONResponse(
        {
            "status": "ok",
            "workers": [
                {
                    "name": w["name"],
                    "device": w.get("device"),
                    "age_s": round(time.time() - w.get("time", 0), 2),
                    "consuming": bool(w.get("consuming")),
                }
                for w in workers
            ],
        }
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **errors(503),
    },
)
def metrics(request: Request) -> Response:
    """Prometheus text format: jobs by status, queue/run times, images, batch sizes."""
    return Response(generate_latest(request.app.state.api.metrics), media_type=CONTENT_TYPE_LATEST)
