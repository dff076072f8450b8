"""The webhook a job request may name: its URL and the events it wants, as request fields
shared by ``POST /generate`` and ``POST /train``, and the form they are stored in."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["WEBHOOK_EVENTS", "WEBHOOK_FIELDS", "WebhookFields", "stored_webhook", "redact_url"]

WEBHOOK_EVENTS = ("start", "progress", "completed")
WEBHOOK_FIELDS = ("webhook", "webhook_events")
WebhookEvent = Literal["start", "progress", "completed"]


class WebhookFields(BaseModel):
    """``webhook`` and ``webhook_events`` of a job request."""

    model_config = ConfigDict(extra="forbid", strict=True)

    webhook: str | None = Field(
        None,
        max_length=2048,
        description="an http(s) URL that receives the job document, signed as Standard "
        "Webhooks says, at each event of webhook_events; delivered at least once",
        examples=["https://example.com/hooks/ddpm"],
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None,
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description="the events to deliver (default: completed): start (the job runs), "
        "progress (at most one a second), completed (it finished, whatever the status)",
    )

    @field_validator("webhook")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValueError("not a URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (user:password@)")
        if any(c.isspace() or ord(c) < 32 for c in v):
            raise ValueError("must not contain whitespace or control characters")
        return v

    @field_validator("webhook_events")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("each event at most once")
        return v


def stored_webhook(req: BaseModel) -> dict[str, Any] | None:
    """The ``webhook`` field of a job's document (None without a webhook)."""
    url = getattr(req, "webhook", None)
    if not url:
        return None
    events = getattr(req, "webhook_events", None) or ["completed"]
    return {"url": url, "events": [e for e in WEBHOOK_EVENTS if e in events]}


def redact_url(url: str) -> str:
    """``url`` as a document shows it: scheme, host and port; its path and query (where
    receivers tend to put tokens) become ``/...``."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{p.port}" if p.port else "")
    rest = "/..." if p.path not in ("", "/") or p.query or p.fragment else "/"
    return urlunsplit((p.scheme, netloc, rest, "", ""))
