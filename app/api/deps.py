"""FastAPI dependencies: the process's objects (:class:`app.api.state.ApiState`) and auth.

Routes take them as ``Annotated`` aliases (``store: StoreDep``)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.api.state import ApiState
from app.core.checkpoints import Registry
from app.core.queue import TaskMessages
from app.core.settings import Settings
from app.core.storage.results import ResultStore
from app.core.store import JobStore

__all__ = [
    "get_state",
    "get_settings_dep",
    "get_store",
    "get_registry",
    "get_task_messages",
    "get_results",
    "require_api_key",
    "require_admin",
    "client_id",
    "StateDep",
    "SettingsDep",
    "StoreDep",
    "RegistryDep",
    "MessagesDep",
    "ResultsDep",
    "ClientDep",
]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


async def get_state(request: Request) -> ApiState:
    return request.app.state.api


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.api.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.api.store


async def get_registry(request: Request) -> Registry:
    return request.app.state.api.registry


async def get_task_messages(request: Request) -> TaskMessages:
    return request.app.state.api.task_messages


async def get_results(request: Request) -> Callable[[str], ResultStore]:
    """A function kind -> ResultStore (each job records where its results went)."""
    return request.app.state.api.results


def _matches(given: str | None, accepted: list[str]) -> bool:
    if not given:
        return False
    ok = False
    for key in accepted:  # no early exit: the time does not depend on which key matched
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


def api_key_accepted(settings: Settings, given: str | None) -> bool:
    """The rule of the public endpoints: with API keys configured, ``given`` (X-API-Key,
    else the Bearer token) must be one of them or the admin token."""
    keys = settings.api_key_list
    if not keys:
        return True
    admin = settings.admin_token
    return _matches(given, keys) or bool(admin and _matches(given, [admin]))


async def require_api_key(
    settings: Settings = Depends(get_settings_dep),
    x_api_key: str | None = Depends(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """When API keys are configured, a public endpoint needs one (X-API-Key or Bearer)."""
    given = x_api_key or (bearer.credentials if bearer else None)
    if api_key_accepted(settings, given):
        return
    reason = "an API key is required" if given is None else "invalid API key"
    raise HTTPException(401, reason, {"WWW-Authenticate": "Bearer"})


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


StateDep = Annotated[ApiState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
MessagesDep = Annotated[TaskMessages, Depends(get_task_messages)]
ResultsDep = Annotated[Callable[[str], ResultStore], Depends(get_results)]
ClientDep = Annotated[str, Depends(client_id)]
