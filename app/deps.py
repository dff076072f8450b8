"""FastAPI dependencies: the objects created by :func:`app.main.create_app`, and auth."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .queue import TaskMessages
from .registry import Registry
from .results import ResultStore, make_result_store, object_store_of
from .settings import Settings
from .store import JobStore

__all__ = [
    "get_settings_dep",
    "get_store",
    "get_registry",
    "get_task_messages",
    "get_results",
    "require_api_key",
    "require_admin",
    "client_id",
]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_task_messages(request: Request) -> TaskMessages:
    return request.app.state.task_messages


async def get_results(request: Request):
    """A function kind -> ResultStore (each job records where its results went); one
    store per kind and app."""
    state = request.app.state
    stores = state.result_stores

    def results_for(kind: str) -> ResultStore:
        if kind not in stores:
            s = state.settings
            objects = object_store_of(s) if kind == "s3" else None
            stores[kind] = make_result_store(
                kind, s.data_dir, state.bin_redis, s.key_prefix, s.job_ttl, objects
            )
        return stores[kind]

    return results_for


def _matches(given: str | None, accepted: list[str]) -> bool:
    if not given:
        return False
    ok = False
    for key in accepted:  # no early exit: the time does not depend on which key matched
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


async def require_api_key(
    settings: Settings = Depends(get_settings_dep),
    x_api_key: str | None = Depends(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """When API keys are configured, a public endpoint needs one (X-API-Key or Bearer)."""
    keys = settings.api_key_list
    if not keys:
        return
    given = x_api_key or (bearer.credentials if bearer else None)
    if given is None:
        raise HTTPException(401, "an API key is required", {"WWW-Authenticate": "Bearer"})
    admin = settings.admin_token
    if not (_matches(given, keys) or (admin and _matches(given, [admin]))):
        raise HTTPException(401, "invalid API key", {"WWW-Authenticate": "Bearer"})


async def require_admin(
    settings: Settings = Depends(get_settings_dep),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """Admin endpoints need ``Authorization: Bearer <admin token>``."""
    if not settings.admin_token:
        raise HTTPException(403, "the admin API is disabled (no admin token configured)")
    if bearer is None:
        raise HTTPException(401, "admin token required", {"WWW-Authenticate": "Bearer"})
    if not _matches(bearer.credentials, [settings.admin_token]):
        raise HTTPException(403, "invalid admin token")


async def client_id(
    settings: Settings = Depends(get_settings_dep),
    x_api_key: str | None = Depends(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> str:
    """Who is calling, for per-client scopes (idempotency keys, fairness limits, stream
    caps): ``admin``, ``key:<hash prefix>`` for an API key, or ``anon`` when no key is
    configured. Never the key itself. Use with :func:`require_api_key` (which checks it)."""
    given = x_api_key or (bearer.credentials if bearer else None)
    if not given:
        return "anon"
    if settings.admin_token and _matches(given, [settings.admin_token]):
        return "admin"
    if _matches(given, settings.api_key_list):
        return "key:" + hashlib.sha256(given.encode()).hexdigest()[:16]
    return "anon"
