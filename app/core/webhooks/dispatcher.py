"""The webhook dispatcher: leases due deliveries from the outbox, makes each attempt on
a thread of its own and records the outcome, fenced by the attempt. Several dispatchers
(one per API process) share the outbox; a delivery is leased for longer than an attempt
can take, so two never deliver the same one at once, and one whose dispatcher died is
taken up again when its lease ends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import redis

from app.core.logs import log_event
from app.core.settings import Settings
from app.core.store import Delivery, JobStore, Outbox
from app.core.webhooks.delivery import attempt_delivery, backoff
from app.core.webhooks.signing import sign_headers

__all__ = ["Dispatcher", "lease_seconds"]

log = logging.getLogger("ddpm.webhooks")

_STATE = {"delivered": "delivered", "retry": "pending", "failed": "failed"}


def lease_seconds(timeout: float) -> float:
    """How long a delivery stays leased: longer than one attempt can take (resolve,
    connect, send, read the answer's head and its first bytes, each within ``timeout``)."""
    return 4 * timeout + 5


class Dispatcher:
    """Delivers the outbox of ``store``; ``render`` turns a stored job document into the
    JSON body (the API's public document)."""

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        render: Callable[[dict[str, Any]], bytes],
        secret: str,
        client: httpx.Client | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = Outbox(store)
        self.render = render
        self.secret = secret
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(settings.webhook_timeout),
            follow_redirects=False,
            trust_env=False,  # a proxy would connect somewhere other than the checked address
            headers={"user-agent": "ddpm-service-webhooks"},
            limits=httpx.Limits(max_connections=settings.webhook_concurrency),
        )
        self.lease = lease_seconds(settings.webhook_timeout)
        self._pool = ThreadPoolExecutor(settings.webhook_concurrency, "webhook")
        self._busy = threading.Semaphore(settings.webhook_concurrency)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one delivery ----------------------------------------------------------------------
    def deliver(self, d: Delivery) -> str:
        """Make attempt ``d.attempt`` of ``d`` and record it; returns the recorded outcome
        (``stale`` when the lease was lost meanwhile)."""
        s = self.settings
        body = self.render(d.doc)
        headers = sign_headers(self.secret, d.id, body) | {"ddpm-webhook-event": d.event}
        att = attempt_delivery(
            self.client, d.url, body, headers, allow_private=s.webhook_allow_private
        )
        outcome, error, delay = att.outcome, att.error, 0.0
        if outcome == "retry" and d.attempt >= s.webhook_max_attempts:
            outcome, error = "failed", f"{att.error}; gave up after {d.attempt} attempts"
        elif outcome == "retry":
            delay = max(
                backoff(d.attempt, s.webhook_backoff, s.webhook_backoff_max),
                att.retry_after or 0.0,
            )
        state = {
            "id": d.id,
            "state": _STATE[outcome],
            "attempts": d.attempt,
            "last_status": att.status,
            "last_error": error,
        }
        if outcome == "retry":
            state["next_attempt_seconds"] = round(delay, 3)
        waited_ms = self.outbox.record(d, outcome, state, delay)
        level = logging.INFO if outcome != "failed" else logging.WARNING
        log_event(
            log,
            f"webhook {outcome if waited_ms is not None else 'lease lost'}",
            level,
            job_id=d.job_id,
            event=d.event,
            attempt=d.attempt,
            status=att.status,
            error=error,
            retry_in=round(delay, 3) if outcome == "retry" else None,
            ms_since_queued=waited_ms,
        )
        return outcome if waited_ms is not None else "stale"

    def _run_one(self, d: Delivery) -> None:
        try:
            self.deliver(d)
        except redis.RedisError as exc:  # the lease lapses and the attempt is made again
            log_event(log, "webhook not recorded", logging.WARNING, job_id=d.job_id, error=str(exc))
        except Exception:
            log.exception("webhook delivery crashed (job_id=%s)", d.job_id)
        finally:
            self._busy.release()

    # -- the loop --------------------------------------------------------------------------
    def step(self) -> int:
        """Lease as many due deliveries as there are free threads and start them."""
        free = 0
        while self._busy.acquire(blocking=False):
            free += 1
        leased: list[Delivery] = []
        try:
            leased = self.outbox.lease(free, self.lease) if free else []
        finally:  # the threads it did not fill are free again, also when Redis is down
            for _ in range(free - len(leased)):
                self._busy.release()
        for d in leased:
            self._pool.submit(self._run_one, d)
        return len(leased)

    def run(self) -> None:
        """Poll until :meth:`stop`; Redis errors wait for the next pass."""
        while not self._stop.is_set():
            try:
                started = self.step()
            except redis.RedisError as exc:
                log_event(log, "webhook outbox unreachable", logging.WARNING, error=str(exc))
                started = 0
            if not started:
                self._stop.wait(self.settings.webhook_poll_interval)

    def start(self) -> Dispatcher:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="webhook-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling; deliveries in flight finish (or their lease lapses)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
