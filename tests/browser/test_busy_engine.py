"""The web page while the engine is busy: a job its worker holds but cannot start yet says
it waits for the engine (not "running" with an empty bar), and its result tells the wait
apart from the run time."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from browser_helpers import Service, service_env
from svc_helpers import wait_job

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def busy(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``ddpm serve`` whose engine runs two images per call and holds four jobs at once:
    a second 2-image job waits in the engine while the first one runs."""
    tmp = tmp_path_factory.mktemp("busy")
    env = service_env(
        tmp / "data",
        redis_url,
        DDPM_PROGRESS_INTERVAL="0.1",
        DDPM_MAX_BATCH="2",
        DDPM_KNEE_FRACTION="0",
    )
    svc = Service(["serve", "--concurrency", "4"], env, tmp / "serve.log", "/readyz")
    try:
        yield svc
    finally:
        svc.stop()


def test_a_job_waiting_for_the_engine_says_so(page, busy):
    http = busy.http
    body = {"checkpoint": "digits", "count": 2, "steps": 1000, "sampler": "ddpm"}
    first = http.post("/generate", json=body | {"seed": 1}).json()
    wait_job(http, first["id"], statuses={"running"}, timeout=60)
    page.goto(f"{busy.base}/#/generate")
    page.wait_for_selector("body[data-ready=generate]")
    page.fill("#f-count", "2")
    page.fill("#f-steps", "1000")
    page.select_option("#f-sampler", "ddpm")
    page.click("#gen-submit")
    # Held by the worker, not computing: the pill and the bar's text say it waits.
    page.wait_for_selector("#job[data-status=waiting]", timeout=30_000)
    assert page.inner_text("#job-status") == "waiting for the engine"
    text = page.locator("#job-progress-text")
    assert text.inner_text().startswith("Waiting for the engine")
    job_id = page.url.rsplit("/", 1)[1]
    # Some seconds of it, counted while it lasts (the first job has ~20 s to go).
    deadline = time.monotonic() + 30
    while (doc := http.get(f"/jobs/{job_id}").json())["metrics"]["wait_seconds"] < 2:
        assert time.monotonic() < deadline and doc["progress"]["waiting"], doc
        time.sleep(0.1)
    page.wait_for_function(
        r"() => /\(([2-9]|\d\d+) s so far\)/.test("
        r"document.querySelector('#job-progress-text').textContent)"
    )
    assert doc["status"] == "running" and doc["progress"]["waiting"] is True
    assert doc["queue_position"] is None and doc["eta_seconds"] is None
    # The engine frees up: it runs, and its result counts the wait apart.
    http.post(f"/jobs/{first['id']}/cancel")
    page.wait_for_selector("#job[data-status=running]", timeout=30_000)
    page.wait_for_selector("#job[data-status=succeeded][data-results='2']", timeout=120_000)
    done = http.get(f"/jobs/{job_id}").json()
    m = done["metrics"]
    assert m["wait_seconds"] >= 2, m
    total = m["wait_seconds"] + m["run_seconds"]
    said = page.inner_text("#job-progress-text")
    assert re.fullmatch(r"Done in .+ after \d+ s waiting for the engine", said), said
    # The run time is the denoising alone: the whole time in the worker is wait + run.
    assert total == pytest.approx(
        _seconds(done["finished_at"]) - _seconds(done["started_at"]), abs=0.5
    )


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
