"""Deadlines (Cancel-After, deadline_seconds) against a real Redis: a queued job past its
deadline never runs, whoever would claim it, and ends canceled with reason deadline,
also through the API with no worker at all; a running one is told to stop."""

from __future__ import annotations

import time

import pytest
from svc_helpers import make_settings, store_for

from app.core.store import RENEW_CANCEL, Outbox

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store(redis_url, tmp_path):
    return store_for(make_settings(redis_url, tmp_path))


def _deadline_error(doc) -> None:
    assert doc["status"] == "canceled", doc
    assert doc["error"]["type"] == "Canceled" and doc["error"]["reason"] == "deadline", doc


def test_a_claim_after_the_deadline_cancels_instead(store) -> None:
    job_id = store.create("generate", {"count": 1}, deadline_seconds=0.2).job_id
    assert store.get(job_id)["deadline_at"]
    time.sleep(0.3)
    assert store.claim(job_id, "generate", "w1") is None
    _deadline_error(store.get(job_id))
    assert store.queue_depth("generate") == 0
    assert [e[1] for e in store.read_events(job_id)][-1] == "done"


def test_before_the_deadline_the_job_runs(store) -> None:
    job_id = store.create("generate", {"count": 1}, deadline_seconds=30).job_id
    claim = store.claim(job_id, "generate", "w1")
    assert claim is not None and claim.attempt == 1
    assert store.finish(job_id, "generate", "succeeded", 1, result={})
    assert store.r.zcard(store.key("deadlines")) == 0  # the finish let go of it
    assert store.expire_deadlines() == 0


def test_the_sweep_cancels_queued_jobs_and_flags_running_ones(store) -> None:
    hook = {"webhook": {"url": "http://127.0.0.1:1/h", "events": ["completed"]}}
    queued = store.create("generate", {}, hook, deadline_seconds=0.2).job_id
    running = store.create("generate", {}, deadline_seconds=0.2).job_id
    later = store.create("generate", {}, deadline_seconds=60).job_id
    assert store.claim(running, "generate", "w1").attempt == 1
    assert store.expire_deadlines() == 0  # nothing is due yet
    time.sleep(0.3)
    assert store.expire_deadlines() == 1
    _deadline_error(store.get(queued))
    assert Outbox(store).pending() == 1  # its completed webhook, in the same step
    assert store.get(later)["status"] == "queued"
    # The running one: its worker's next renewal sees a cancel; its finish says why.
    assert store.renew("generate", {running: 1})[running] & RENEW_CANCEL
    assert store.finish(
        running, "generate", "canceled", 1, error={"type": "Canceled", "message": "x"}
    )
    _deadline_error(store.get(running))
    assert store.expire_deadlines() == 0  # idempotent
    assert store.r.zcard(store.key("deadlines")) == 1  # the one still to come


def test_an_expired_job_leaves_the_deadlines(store) -> None:
    job_id = store.create("generate", {}, deadline_seconds=0.1).job_id
    store.r.delete(store.job_key(job_id))  # its document expired meanwhile
    time.sleep(0.15)
    assert store.expire_deadlines() == 0
    assert store.r.zcard(store.key("deadlines")) == 0


def test_through_the_api_with_no_worker(isolated) -> None:
    """Every worker down: the API's sweeper cancels the job when its deadline passes."""
    settings, client = isolated(reaper_interval=0.2)
    with client:
        r = client.post("/generate", json={"count": 1}, headers={"Cancel-After": "1s"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.json()["deadline_at"]
        r2 = client.post("/generate", json={"count": 1, "deadline_seconds": 120})
        assert r2.status_code == 202, r2.text
        deadline = time.monotonic() + 15
        while (doc := client.get(f"/jobs/{job_id}").json())["status"] == "queued":
            assert time.monotonic() < deadline, doc
            time.sleep(0.1)
        _deadline_error(doc)
        assert client.get(f"/jobs/{r2.json()['id']}").json()["status"] == "queued"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"deadline_seconds": 0}, {}),
        ({"deadline_seconds": -1}, {}),
        ({"deadline_seconds": 10**9}, {}),
        ({}, {"Cancel-After": "soon"}),
        ({}, {"Cancel-After": "0"}),
        ({}, {"Cancel-After": "5x"}),
        ({}, {"Cancel-After": ""}),
    ],
)
def test_bad_deadlines_are_refused_with_422(isolated, body, headers) -> None:
    _, client = isolated()
    r = client.post("/generate", json=body, headers=headers)
    assert r.status_code == 422, r.text
    assert "deadline" in r.text.lower() or "cancel-after" in r.text.lower()


@pytest.mark.parametrize(
    ("value", "seconds"), [("90", 90), ("1.5", 1.5), ("5m", 300), ("1h30m", 5400), ("2s", 2)]
)
def test_cancel_after_durations(value, seconds) -> None:
    from app.core.jobs.deadline import parse_cancel_after

    assert parse_cancel_after(value) == seconds
