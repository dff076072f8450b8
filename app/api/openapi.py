"""The OpenAPI document as the contract: real error bodies, auth, limits, content types.

Routes declare their error statuses with :func:`errors` (``responses=``);
:func:`install` gives the app an ``openapi()`` that replaces FastAPI's default 422
schema with ours, describes the security that applies with these settings (API keys
only when configured, the admin token on admin routes) and writes the configured
limits (``DDPM_MAX_*``) into the request schemas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.deps import require_admin, require_api_key
from app.api.routing import api_routes
from app.api.schemas import ErrorMessage, ValidationErrorBody
from app.core.settings import Settings

__all__ = [
    "errors",
    "install",
    "operation_id",
    "JOB_LINKS",
    "CHECKPOINT_LINKS",
]

_DEFAULT_TEXT = {
    400: "a header value is malformed or out of range",
    401: "authentication required: no or an unknown key/token",
    403: "forbidden: wrong admin token, or the admin API is disabled",
    404: "not found",
    409: "the resource is in a state that does not allow this",
    413: "the request body is larger than DDPM_MAX_BODY_BYTES",
    422: "invalid input: every offending field with the reason",
    429: "too many: retry after Retry-After seconds",
    503: "the job store or broker is unreachable",
}

_RETRY_AFTER = {
    "description": "seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 1},
}


def errors(*codes: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for these error statuses, each an int or (status, description),
    with the body the API sends (``ErrorMessage``, or ``ValidationErrorBody`` for 422)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        status, text = code if isinstance(code, tuple) else (code, _DEFAULT_TEXT[code])
        entry: dict[str, Any] = {
            "description": text,
            "model": ValidationErrorBody if status == 422 else ErrorMessage,
        }
        if status == 429:
            entry["headers"] = {"Retry-After": _RETRY_AFTER | {"required": True}}
        elif status == 503:
            entry["headers"] = {"Retry-After": _RETRY_AFTER}
        elif status == 401:
            entry["headers"] = {
                "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
            }
        out[status] = entry
    return out


def _link(op: str, description: str) -> dict[str, Any]:
    return {
        "operationId": op,
        "parameters": {"job_id": "$response.body#/id"},
        "description": description,
    }


# Links from a 202 job document to what a client does next (also drives stateful fuzzing).
JOB_LINKS = {
    "GetJob": _link("get_job", "poll the job"),
    "CancelJob": _link("cancel", "cancel the job"),
    "JobEvents": _link("events", "stream the job's events"),
    "GetGrid": _link("grid", "the grid of a finished generate job"),
    "GetTrajectory": _link("trajectory", "the denoising GIF of a finished generate job"),
}

# From the registry listing to one checkpoint.
CHECKPOINT_LINKS = {
    "GetCheckpoint": {
        "operationId": "get_checkpoint",
        "parameters": {"ref": "$response.body#/0/name"},
        "description": "the first listed checkpoint",
    }
}


def operation_id(route: Any) -> str:
    """Operation ids are the route functions' names (``generate``, ``get_job``, ...)."""
    return route.name


def _calls(route: Any) -> set[Callable[..., Any]]:
    seen: set[Callable[..., Any]] = set()
    stack = [route.dependant]
    while stack:
        d = stack.pop()
        if d.call is not None:
            seen.add(d.call)
        stack.extend(d.dependencies)
    return seen


_SCHEMES = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "an API key of DDPM_API_KEYS (or send it as `Authorization: Bearer`)",
    },
    "BearerApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key of DDPM_API_KEYS as a bearer token",
    },
    "AdminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the admin token: DDPM_ADMIN_TOKEN, or the one `ddpm serve`/`ddpm api` "
        "generate into DATA_DIR/admin_token (mode 0600)",
    },
}


def _security(doc: dict[str, Any], api: FastAPI, s: Settings) -> None:
    keys = bool(s.api_key_list)
    admin_on = bool(s.admin_token)
    used: set[str] = set()
    for route in api_routes(api):
        calls = _calls(route)
        for method in route.methods:
            op = doc["paths"].get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            responses = op["responses"]
            op.pop("security", None)
            if require_admin in calls:
                if admin_on:
                    op["security"] = [{"AdminToken": []}]
                    used.add("AdminToken")
                else:
                    responses.pop("401", None)
                    responses["403"]["description"] = "the admin API is disabled here"
            elif require_api_key in calls:
                if keys:
                    op["security"] = [{"ApiKey": []}, {"BearerApiKey": []}]
                    used |= {"ApiKey", "BearerApiKey"}
                else:
                    responses.pop("401", None)  # no keys configured: nobody is refused
    schemes = {k: v for k, v in _SCHEMES.items() if k in used}
    if schemes:
        doc["components"]["securitySchemes"] = schemes
    else:
        doc["components"].pop("securitySchemes", None)


def _integer_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """The integer branch of a property schema (``int | None`` is an ``anyOf``)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") == "integer":
            return branch
    return prop


def _limit(schema: dict[str, Any], field: str, maximum: int, note: str) -> None:
    prop = schema.get("properties", {}).get(field)
    if prop is None:
        return
    branch = _integer_schema(prop)
    branch["maximum"] = min(maximum, branch.get("maximum", maximum))
    prop["description"] = (prop.get("description", "") + f" {note}").strip()


def _limits(doc: dict[str, Any], s: Settings) -> None:
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        if name.split("-")[0] != "GenerateRequest":
            continue
        _limit(schema, "count", s.max_count, f"(DDPM_MAX_COUNT = {s.max_count} here)")
        _limit(
            schema,
            "steps",
            s.max_steps,
            f"(at most DDPM_MAX_STEPS = {s.max_steps} here, and at most the checkpoint's "
            "number of training timesteps T: 422 above it)",
        )
        _limit(
            schema,
            "trajectory_frames",
            s.max_trajectory_frames,
            f"(DDPM_MAX_TRAJECTORY_FRAMES = {s.max_trajectory_frames} here, and at most steps)",
        )
    for path in doc["paths"].values():
        for op in path.values():
            if "413" in op.get("responses", {}):
                op["responses"]["413"]["description"] = (
                    f"the request body is larger than {s.max_body_bytes} bytes "
                    "(DDPM_MAX_BODY_BYTES)"
                )


def _own_validation_schema(doc: dict[str, Any]) -> None:
    """FastAPI adds its ``HTTPValidationError`` (loc/msg/type) wherever a route has
    parameters and declares no 422; the API answers ``ValidationErrorBody`` there."""
    ours = {"$ref": "#/components/schemas/ValidationErrorBody"}
    for path in doc["paths"].values():
        for op in path.values():
            r422 = op.get("responses", {}).get("422")
            if r422 is not None:
                r422["content"] = {"application/json": {"schema": ours}}
                r422["description"] = _DEFAULT_TEXT[422]
    schemas = doc["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if "ValidationErrorBody" not in schemas:
        schemas["ValidationErrorBody"] = ValidationErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schemas.update(schemas["ValidationErrorBody"].pop("$defs", {}))


def _no_null_params(doc: dict[str, Any]) -> None:
    """An optional header or query parameter is absent or a string, never null (FastAPI
    writes ``str | None`` as ``anyOf [string, null]``, and a client would send "null")."""
    for path in doc["paths"].values():
        for op in path.values():
            for param in op.get("parameters", []):
                schema = param.get("schema", {})
                branches = schema.get("anyOf")
                if param.get("in") not in ("header", "query") or not branches:
                    continue
                kept = [b for b in branches if b.get("type") != "null"]
                if len(kept) == 1 and len(kept) < len(branches):
                    rest = {k: v for k, v in schema.items() if k != "anyOf"}
                    param["schema"] = rest | kept[0]


def _json_errors(doc: dict[str, Any]) -> None:
    """Errors are JSON also on routes whose success is an event stream or an image
    (FastAPI files a model under the route's own media type)."""
    for path in doc["paths"].values():
        for op in path.values():
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content")
                if status[0] in "45" and content and "application/json" not in content:
                    resp["content"] = {"application/json": next(iter(content.values()))}


def install(api: FastAPI, settings: Settings) -> None:
    """Give ``api`` the ``openapi()`` described in this module's docstring."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema:
            return api.openapi_schema
        doc = get_openapi(
            title=api.title,
            version=api.version,
            description=api.description,
            routes=api.routes,
            tags=api.openapi_tags,
        )
        _own_validation_schema(doc)
        _json_errors(doc)
        _no_null_params(doc)
        _security(doc, api, settings)
        _limits(doc, settings)
        api.openapi_schema = doc
        return doc

    api.openapi = openapi  # type: ignore[method-assign]
