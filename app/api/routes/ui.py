"""The web page: ``/`` and its static files under ``/ui/`` (app/api/ui, shipped in the package).

Plain ES modules and CSS, no build step, nothing loaded from elsewhere: the Content
Security Policy allows the page to talk to this origin only. The page itself needs no
key (it asks for one when the API answers 401).
"""

from __future__ import annotations

import re
from pathlib import Path as FsPath

from fastapi import APIRouter, Path, Response

from app.api.errors import HttpError

router = APIRouter(include_in_schema=False)

UI_DIR = FsPath(__file__).resolve().parent.parent / "ui"
_NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,63}\.(js|css|svg)$"
_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "html": "text/html; charset=utf-8",
}
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new release shows at once
}


def _file(name: str) -> Response:
    known = name == "index.html" or re.fullmatch(_NAME_RE, name)
    path = UI_DIR / name
    if not known or not path.is_file():
        raise HttpError(404, f"no such file: {name}")
    kind = name.rsplit(".", 1)[1]
    return Response(path.read_bytes(), media_type=_TYPES[kind], headers=_HEADERS)


@router.get("/", response_class=Response)
def index() -> Response:
    """The single-page UI."""
    return _file("index.html")


@router.get("/ui/{name}", response_class=Response)
def asset(name: str = Path(..., max_length=80)) -> Response:
    """A static file of the page."""
    return _file(name)
