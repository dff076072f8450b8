"""The webhook dispatcher of an API process: deliveries carry the public job document."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from app.api.services.documents import present
from app.core.logs import log_event
from app.core.settings import Settings
from app.core.store import JobStore

if TYPE_CHECKING:
    from app.core.webhooks import Dispatcher

__all__ = ["render", "start_dispatcher"]

log = logging.getLogger("ddpm.webhooks")


def render(doc: dict[str, Any]) -> bytes:
    """The body of a delivery: the job's public document as it was at the event."""
    return present(doc, None).model_dump_json().encode()


def start_dispatcher(settings: Settings, store: JobStore) -> Dispatcher | None:
    """A running dispatcher, or None when this process has no signing secret to sign with
    (deliveries wait in the outbox for one that has), or no HTTP client (httpx)."""
    try:
        from app.core.webhooks import Dispatcher, signing_secret
    except ImportError as exc:  # an image without httpx: jobs run, deliveries wait
        log_event(log, "webhook dispatcher not started", logging.ERROR, error=str(exc))
        return None
    try:
        secret = signing_secret(settings.webhook_secret, settings.data_dir)
    except OSError as exc:
        log_event(
            log,
            "webhook dispatcher not started: no signing secret (set DDPM_WEBHOOK_SECRET)",
            logging.ERROR,
            error=str(exc),
        )
        return None
    return Dispatcher(store, settings, render, secret).start()
