"""The page against a service that requires an API key (``ddpm api`` alone: no worker, so
jobs stay queued): it asks for the key, keeps it for the session only, sends it as a
header (never in a URL), and follows jobs with a fetch-based event reader that resumes
with Last-Event-ID, since EventSource cannot send headers."""

from __future__ import annotations

import pytest
from browser_helpers import Service, service_env

pytestmark = pytest.mark.timeout(120)

KEY = "page-test-key-123"


@pytest.fixture(scope="module")
def keyed(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    env = service_env(tmp / "data", redis_url, DDPM_API_KEYS=KEY)
    svc = Service(["api"], env, tmp / "api.log", "/healthz")
    try:
        yield svc
    finally:
        svc.stop()


def test_page_asks_for_the_key_and_follows_jobs_with_it(page, keyed, browser_context):
    events_requests = []

    def first_stream_drops(route):
        """The first stream carries one event, then drops; later ones reach the service."""
        events_requests.append(route.request.headers)
        if len(events_requests) == 1:
            body = 'retry: 200\n\nid: 1-0\nevent: status\ndata: {"status": "queued"}\n\n'
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)
        else:
            route.continue_()

    page.route("**/events*", first_stream_drops)
    page.goto(f"{keyed.base}/")
    dialog = page.locator("#key-dialog")
    dialog.wait_for(state="visible")
    page.fill("#key-input", "wrong-key")
    page.click("#key-submit")
    # Refused: asked again, saying so.
    page.wait_for_function("() => document.querySelector('#key-dialog').open")
    page.wait_for_selector("#key-reason:has-text('refused')")
    page.fill("#key-input", KEY)
    page.click("#key-submit")
    page.wait_for_selector("body[data-ready=generate]")
    assert page.input_value("#f-checkpoint") == "digits"

    page.fill("#f-count", "2")
    page.click("#gen-submit")
    page.wait_for_selector("#job[data-status=queued]")
    page.wait_for_selector("#job-queue:not([hidden])")
    assert "next in line" in page.inner_text("#job-queue")
    # The dropped stream was resumed from the last event it delivered, with the key.
    page.wait_for_function("() => document.querySelector('#job').dataset.mode === 'live'")
    page.wait_for_timeout(200)
    assert len(events_requests) >= 2, events_requests
    assert events_requests[0].get("x-api-key") == KEY
    assert events_requests[1].get("last-event-id") == "1-0"
    assert events_requests[1].get("x-api-key") == KEY

    # Cancel works with the key too; the stream then delivers the outcome.
    page.click("#job-cancel")
    page.wait_for_selector("#job[data-status=canceled]")

    # The key lives in this tab's session only, never in a URL.
    assert KEY in page.evaluate("() => JSON.stringify(sessionStorage)")
    assert KEY not in page.evaluate("() => JSON.stringify(localStorage)")
    assert not [u for u in browser_context.requests if KEY in u]
    # Images go through the key too: the checkpoints page shows the built-in's grid.
    page.goto(f"{keyed.base}/#/checkpoints")
    page.wait_for_selector("body[data-ready=checkpoints]")
    page.wait_for_function(
        """() => { const i = document.querySelector("article[data-ref='digits@builtin'] img");
                   return i && i.complete && i.naturalWidth > 0; }"""
    )
    assert page.get_attribute("article[data-ref='digits@builtin'] img", "src").startswith("blob:")
