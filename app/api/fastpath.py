"""The two reads every job costs, answered in front of FastAPI: ``GET /jobs/{id}``
(a poll) and ``GET /jobs/{id}/images/{i}.{ext}`` (the download).

A small job is a submission, a few polls and a download, and most of what the API spends
on a poll is FastAPI's per-request work around a few lines of its own: matching the path
against every route, solving the dependencies (settings, store, the API key's two
security schemes), validating the parameters. Here the happy path of those two reads
is served directly: a well-formed path, no query string (a long poll, ``?wait=``, goes
the usual way), a request the API key check would let through, a job that exists (and,
for a download, a file that is there). Its answer is the route's own answer, made by the
same code (:func:`~app.api.services.documents.present`, ``_result``). Anything else --
a 401, 404, 409, 422, a Redis error -- is handed to the application unchanged, which
answers it as it always has; so the fast path changes no status, header or body, only
what a successful read costs.
"""

from __future__ import annotations

import re

import redis
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.api.deps import api_key_accepted
from app.api.errors import HttpError
from app.api.services.documents import document_response, present
from app.api.state import ApiState
from app.core.errors import ServiceError
from ddpm_core.config.formats import IMAGE_FORMATS

__all__ = ["FastReads"]

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_EXTS = "|".join(re.escape(f.extension) for f in IMAGE_FORMATS.values())
_JOB = re.compile(rf"/jobs/({_UUID})")
_IMAGE = re.compile(rf"/jobs/({_UUID})/images/([0-9]{{1,5}})\.({_EXTS})")


class FastReads:
    """The successful polls and downloads, served in front of the whole application
    (FastAPI's own middleware included): :meth:`serve` answers them and says so; every
    other request (and every failure) is left to the application."""

    def __init__(self, state: ApiState) -> None:
        self.state = state

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request if it is one of the two reads and succeeds; False when it
        was left alone (nothing was sent)."""
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope.get("query_string")
            or scope.get("root_path")
        ):
            return False
        try:
            response = await self._response(scope)
        except Exception:  # noqa: BLE001 - the application answers it, as it always has
            return False
        if response is None:
            return False
        await response(scope, receive, send)
        return True

    async def _response(self, scope: Scope) -> Response | None:
        path = scope["path"]
        if not path.startswith("/jobs/") or not self._bodyless(scope):
            return None
        if m := _JOB.fullmatch(path):
            return await self._document(m.group(1)) if self._authorized(scope) else None
        if (m := _IMAGE.fullmatch(path)) and self._authorized(scope):
            return await self._image(m.group(1), m.group(2), m.group(3))
        return None

    @staticmethod
    def _bodyless(scope: Scope) -> bool:
        """No request body declared (a body goes through the body-size limit)."""
        return not any(n in (b"content-length", b"transfer-encoding") for n, _ in scope["headers"])

    def _authorized(self, scope: Scope) -> bool:
        """Whether :func:`app.api.deps.require_api_key` lets the request through (the same
        rule, :func:`~app.api.deps.api_key_accepted`, on the same headers)."""
        settings = self.state.settings
        if not settings.api_key_list:
            return True
        api_key = bearer = None
        for name, value in scope["headers"]:
            if name == b"x-api-key" and api_key is None:
                api_key = value.decode("latin-1")
            elif name == b"authorization" and bearer is None:
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                bearer = credentials if scheme.lower() == "bearer" and credentials else ""
        return api_key_accepted(settings, api_key or bearer)

    async def _document(self, job_id: str) -> Response | None:
        """What ``GET /jobs/{id}`` answers for a job that exists; None otherwise."""
        store, ar = self.state.store, self.state.aredis.get()
        try:
            doc = await store.aget(ar, job_id)
            if doc is None:
                return None
            position = None
            if doc["status"] == "queued":
                position = await store.aqueue_position(ar, job_id, doc["kind"])
        except redis.RedisError:
            return None
        return document_response(present(doc, position))

    async def _image(self, job_id: str, index: str, ext: str) -> Response | None:
        """What the image route answers for a file that is there; None otherwise."""
        from app.api.routes.jobs import result_response

        state = self.state
        try:
            return await result_response(
                state.aredis.get(), state.store, state.results, state.settings, job_id,
                str(int(index)), ext,
            )  # fmt: skip
        except (HttpError, ServiceError, redis.RedisError, OSError):
            return None
