"""Webhooks: signed deliveries of a job's events (``start``, ``progress``, ``completed``)
from the store's outbox (:mod:`app.core.store.outbox`), at least once."""

from app.core.webhooks import addresses, delivery, dispatcher, signing
from app.core.webhooks.addresses import *  # noqa: F403 - the package's face: its modules' API
from app.core.webhooks.delivery import *  # noqa: F403
from app.core.webhooks.dispatcher import *  # noqa: F403
from app.core.webhooks.signing import *  # noqa: F403

__all__ = [*addresses.__all__, *delivery.__all__, *dispatcher.__all__, *signing.__all__]
