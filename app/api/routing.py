"""The API's routes as FastAPI resolves them (routers included), for the OpenAPI document
and the 405 answer's ``Allow``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, routing
from fastapi.routing import APIRoute

__all__ = ["api_routes", "allowed_methods"]


def api_routes(api: FastAPI) -> list[Any]:
    """The API routes with their effective dependencies (routers included): FastAPI's
    route contexts where it has them, else the routes themselves."""
    contexts = getattr(routing, "iter_route_contexts", None)
    if contexts is None:
        return [r for r in api.routes if isinstance(r, APIRoute)]
    return [c for c in contexts(api.routes) if isinstance(c.original_route, APIRoute)]


def allowed_methods(api: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (Starlette's 405 names only those of
    the first route whose path matches, e.g. GET for ``/checkpoints/x`` but not DELETE)."""
    methods: set[str] = set()
    for route in api_routes(api):
        original = getattr(route, "original_route", route)
        if original.path_regex.match(path):
            methods |= set(route.methods or ())
    return sorted(methods)
