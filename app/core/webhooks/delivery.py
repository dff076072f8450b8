"""One delivery attempt of a webhook and what it means: delivered, retry later, or a
permanent failure; and the wait before the next attempt."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Literal

import httpx

from app.core.webhooks.addresses import Refused, resolve_target

__all__ = ["Attempt", "attempt_delivery", "backoff", "retry_after", "MAX_RESPONSE_BYTES"]

# A receiver's answer is read this far and no further (only its status matters).
MAX_RESPONSE_BYTES = 4096
# The longest Retry-After honoured, in seconds (beyond it, the delivery waits this long).
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True)
class Attempt:
    """What one attempt did. ``error`` never holds the URL (the document shows it)."""

    outcome: Literal["delivered", "retry", "failed"]
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when - (time.time() if now is None else now)), MAX_RETRY_AFTER)


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before the attempt after ``attempt`` (1 = the first): ``base`` doubled per
    attempt up to ``cap``, then jittered down by up to half, so that receivers coming back
    after an outage are not hit by every retry at the same moment."""
    wait = min(cap, base * 2 ** (attempt - 1))
    return wait * (0.5 + 0.5 * (rng or random).random())


def attempt_delivery(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool = False,
) -> Attempt:
    """POST ``body`` to ``url`` once. 2xx: delivered. Connection errors, timeouts, 5xx, 408
    and 429: retry (with the answer's Retry-After). Any other status (3xx: redirects are
    not followed; 4xx) and a refused address: failed for good."""
    try:
        target = resolve_target(url, allow_private)
    except Refused as exc:
        return Attempt("failed", error=f"refused: {exc}")
    request = client.build_request(
        "POST",
        target.connect_url,
        content=body,
        headers=headers | {"host": target.host_header, "content-type": "application/json"},
        extensions={"sni_hostname": target.host},
    )
    try:
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= MAX_RESPONSE_BYTES:
                    break
        finally:
            response.close()
    except httpx.TimeoutException as exc:
        return Attempt("retry", error=f"timeout ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        return Attempt("retry", error=f"connection failed ({type(exc).__name__})")
    status = response.status_code
    if 200 <= status < 300:
        return Attempt("delivered", status)
    if status >= 500 or status in (408, 429):
        wait = retry_after(response.headers.get("retry-after"))
        return Attempt("retry", status, f"HTTP {status}", wait)
    return Attempt("failed", status, f"HTTP {status} (not retried)")
