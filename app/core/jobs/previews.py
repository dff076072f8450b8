"""Live previews of running jobs: who watches, and where the latest grid is.

A client asks for previews by opening ``GET /jobs/{id}/events?preview=1``. While that
stream stays open the API keeps a short-lived flag ``job:{id}:preview`` alive
(:mod:`app.api.streaming.preview_watch`); the worker's monitor reads the flag back with
every lease renewal. Only then does the worker copy the rows' x0 estimate off the device, encode a
small PNG grid as the result file ``preview.png`` (per attempt, like the images) and
record a ``preview`` event ``{"step", "total", "url"}``. Nobody watching costs the
worker one flag check per step and nothing else.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PREVIEW_TTL", "PREVIEW_REFRESH", "PREVIEW_NAME", "preview_event"]

PREVIEW_NAME = "preview.png"
PREVIEW_TTL = 10.0  # seconds the flag outlives its last refresh (a closed stream)
PREVIEW_REFRESH = 3.0  # seconds between refreshes while the stream is open


def preview_event(job_id: str, step: int, total: int) -> dict[str, Any]:
    """The data of a ``preview`` event; the step in the URL makes each one a new resource
    for the browser's cache."""
    return {"step": step, "total": total, "url": f"/jobs/{job_id}/{PREVIEW_NAME}?step={step}"}
