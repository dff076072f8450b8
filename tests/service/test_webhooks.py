"""Webhooks against real components: the store's outbox in a real Redis, dispatchers
delivering over HTTP to a real receiver on 127.0.0.1 that verifies every signature with
the ``standardwebhooks`` package, a dispatcher (an API process) SIGKILLed mid-delivery,
and a job that runs on the session's worker."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest
from svc_helpers import ROOT, make_settings, service_env, store_for, wait_job
from webhook_receiver import Receiver

from app.api.services.webhooks import render
from app.core.store import Outbox
from app.core.webhooks import Dispatcher, attempt_delivery, make_secret, signing_secret

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def secret() -> str:
    return make_secret()


@pytest.fixture
def receiver(secret):
    r = Receiver(secret).start()
    yield r
    r.stop()


@pytest.fixture
def hs(redis_url, tmp_path):
    """Settings on a key prefix of their own, with retries in tens of milliseconds."""
    return make_settings(redis_url, tmp_path, webhook_backoff=0.05, webhook_backoff_max=0.2)


def _job(store, url: str, events=("completed",), finish: str | None = "succeeded") -> str:
    """A job with a webhook, claimed and (unless ``finish`` is None) finished."""
    job_id = store.create("generate", {"count": 1}, {"webhook": {"url": url, "events": events}})
    job_id = job_id.job_id
    claim = store.claim(job_id, "generate", "w1")
    if finish:
        assert store.finish(job_id, "generate", finish, claim.attempt, result={"images": []})
    return job_id


def _dispatcher(store, settings, secret, **over) -> Dispatcher:
    return Dispatcher(store, settings.model_copy(update=over), render, secret)


def _drain(dispatcher: Dispatcher, until, timeout: float = 30.0) -> None:
    """Run ``dispatcher`` until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "dispatcher did not get there in time"
        if not dispatcher.step():
            time.sleep(0.02)


def test_completed_is_signed_retried_on_503_drop_and_429_and_recorded(hs, secret, receiver) -> None:
    store = store_for(hs)
    job_id = _job(store, receiver.url)
    wid = f"{job_id}.completed"
    receiver.replies[wid] = [503, "drop", (429, {"Retry-After": "1"}), 200]
    d = _dispatcher(store, hs, secret)
    outbox = Outbox(store)
    assert outbox.pending() == 1  # queued by the finish itself
    _drain(d, lambda: outbox.pending() == 0)
    got = receiver.of(wid)
    assert [r.answered for r in got] == [503, "drop", 429, 200]
    assert all(r.verified for r in got), "a signature standardwebhooks rejects"
    # The backoff is 50-200 ms here: the wait after the 429 is its Retry-After.
    assert got[3].at - got[2].at >= 1.0
    assert got[1].at - got[0].at < 1.0
    body = got[-1].body
    assert body["id"] == job_id and body["status"] == "succeeded"
    assert body["webhook"]["url"] == f"http://127.0.0.1:{receiver.port}/..."  # redacted
    doc = store.get(job_id)
    state = doc["webhooks"]["completed"]
    assert state["state"] == "delivered" and state["attempts"] == 4
    assert state["last_status"] == 200
    stats = store.stats()
    assert stats["webhook_deliveries:retry"] == 3 and stats["webhook_deliveries:delivered"] == 1
    d.stop()


@pytest.mark.parametrize("status", [301, 307, 400, 404, 410])
def test_3xx_and_4xx_are_permanent_failures(hs, secret, receiver, status) -> None:
    store = store_for(hs)
    job_id = _job(store, receiver.url)
    wid = f"{job_id}.completed"
    receiver.replies[wid] = [(status, {"Location": "http://127.0.0.1:1/elsewhere"})]
    d = _dispatcher(store, hs, secret)
    outbox = Outbox(store)
    _drain(d, lambda: outbox.pending() == 0)
    time.sleep(0.3)  # longer than any backoff here: a retry would have come
    assert d.step() == 0
    assert [r.answered for r in receiver.of(wid)] == [status]
    state = store.get(job_id)["webhooks"]["completed"]
    assert state["state"] == "failed" and state["attempts"] == 1
    assert state["last_status"] == status and "not retried" in state["last_error"]
    assert store.stats()["webhook_deliveries:failed"] == 1
    d.stop()


def test_gives_up_after_max_attempts(hs, secret, receiver) -> None:
    store = store_for(hs)
    job_id = _job(store, receiver.url)
    wid = f"{job_id}.completed"
    receiver.replies[wid] = [500] * 10
    d = _dispatcher(store, hs, secret, webhook_max_attempts=3)
    outbox = Outbox(store)
    _drain(d, lambda: outbox.pending() == 0)
    assert len(receiver.of(wid)) == 3
    state = store.get(job_id)["webhooks"]["completed"]
    assert state["state"] == "failed" and "gave up after 3 attempts" in state["last_error"]
    d.stop()


def test_every_terminal_transition_queues_completed_and_start_queues_per_attempt(
    hs, secret, receiver
) -> None:
    store = store_for(hs)
    events = ["start", "completed"]
    canceled = store.create("generate", {}, {"webhook": {"url": receiver.url, "events": events}})
    store.cancel(canceled.job_id, "generate")  # queued -> canceled: no start, one completed
    failed = _job(store, receiver.url, events, finish="failed")
    plain = store.create("generate", {}).job_id  # no webhook: nothing queued
    store.finish(plain, "generate", "canceled", None, allowed=("queued",))
    d = _dispatcher(store, hs, secret)
    outbox = Outbox(store)
    _drain(d, lambda: outbox.pending() == 0)
    ids = sorted(r.id for r in receiver.received)
    assert ids == sorted(
        [f"{canceled.job_id}.completed", f"{failed}.start.1", f"{failed}.completed"]
    )
    by_id = {r.id: r for r in receiver.received}
    assert by_id[f"{failed}.start.1"].body["status"] == "running"  # the job as it was then
    assert by_id[f"{failed}.completed"].body["status"] == "failed"
    assert by_id[f"{canceled.job_id}.completed"].event == "completed"
    assert all(r.verified for r in receiver.received)
    d.stop()


def test_progress_is_coalesced_to_one_a_second(hs, secret, receiver) -> None:
    store = store_for(hs)
    job_id = _job(store, receiver.url, ["progress"], finish=None)
    outbox = Outbox(store)
    for step in range(1, 11):
        progress = {"step": step, "total": 100, "fraction": step / 100}
        assert store.renew("generate", {job_id: 1}, {job_id: progress})[job_id] >= 0
    assert outbox.pending() == 1
    time.sleep(1.05)
    store.renew("generate", {job_id: 1}, {job_id: {"step": 11, "total": 100, "fraction": 0.11}})
    assert outbox.pending() == 2
    d = _dispatcher(store, hs, secret)
    _drain(d, lambda: outbox.pending() == 0)
    steps = sorted(r.body["progress"]["step"] for r in receiver.received)
    assert steps == [1, 11]
    assert store.get(job_id)["webhooks"]["progress"]["id"] == f"{job_id}.progress.2"
    d.stop()


def test_two_dispatchers_never_deliver_one_event_at_once(hs, secret, receiver) -> None:
    store = store_for(hs)
    jobs = [_job(store, receiver.url) for _ in range(24)]
    receiver.delay = 0.15
    receiver.default_replies = [503]  # each delivered on its second attempt
    outbox = Outbox(store)
    a = _dispatcher(store, hs, secret, webhook_concurrency=4)
    b = _dispatcher(store, hs, secret, webhook_concurrency=4)
    a.start(), b.start()
    receiver.wait_for(lambda: outbox.pending() == 0, timeout=60)
    a.stop(), b.stop()
    for job_id in jobs:
        got = receiver.of(f"{job_id}.completed")
        assert [r.answered for r in got] == [503, 200], got
    assert max(receiver.max_in_flight.values()) == 1


def test_deliveries_to_private_addresses_are_refused_by_default(
    redis_url, tmp_path, receiver
) -> None:
    s = make_settings(redis_url, tmp_path, webhook_allow_private=False)
    assert s.webhook_allow_private is False
    port = receiver.port
    refused = [
        f"http://127.0.0.1:{port}/hook",  # the receiver itself: it would have answered
        f"http://localhost:{port}/hook",  # a name that resolves to loopback
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "https://192.168.1.1/hook",
        "http://0.0.0.0/hook",
    ]
    with httpx.Client(timeout=2) as client:
        for url in refused:
            att = attempt_delivery(client, url, b"{}", {}, allow_private=False)
            assert att.outcome == "failed" and att.error.startswith("refused"), (url, att)
        assert receiver.received == []
        allowed = attempt_delivery(client, refused[1], b"{}", {}, allow_private=True)
    assert allowed.outcome == "delivered" and len(receiver.received) == 1
    # The Host header names the URL's host, though the connection went to its address.


def test_signing_secret_is_generated_once_with_mode_0600(tmp_path) -> None:
    s1 = signing_secret(None, tmp_path)
    path = tmp_path / "webhook_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert s1.startswith("whsec_") and signing_secret(None, tmp_path) == s1
    configured = make_secret()
    assert signing_secret(configured, tmp_path) == configured


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(settings, log) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=service_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, f"http://127.0.0.1:{port}"


def test_a_dispatcher_killed_mid_delivery_is_taken_over(redis_url, tmp_path) -> None:
    """The API process (its dispatcher) SIGKILLed while a receiver holds a delivery open:
    the next API process delivers it again, with the same webhook-id, once its lease ends."""
    settings = make_settings(redis_url, tmp_path, webhook_timeout=0.5)  # lease: 7 s
    secret = signing_secret(None, tmp_path)  # the file the API processes sign with
    receiver = Receiver(secret).start()
    store = store_for(settings)
    job_id = _job(store, receiver.url)
    wid = f"{job_id}.completed"
    receiver.replies[wid] = ["hold"]
    log = open(tmp_path / "api.log", "ab")  # noqa: SIM115
    first, _ = _api(settings, log)
    try:
        assert receiver.held.wait(60), (tmp_path / "api.log").read_text()[-3000:]
        first.kill()
        first.wait(10)
        receiver.release.set()
        killed_at = time.monotonic()
        second, _ = _api(settings, log)
        try:
            receiver.wait_for(lambda: len(receiver.of(wid)) == 2, timeout=60)
            receiver.wait_for(lambda: Outbox(store).pending() == 0, timeout=10)
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
        receiver.stop()
    got = receiver.of(wid)
    assert all(r.verified for r in got) and got[1].body["id"] == job_id
    assert got[1].at - killed_at >= 3.0  # not before the lease ended (7 s after the claim)
    assert store.get(job_id)["webhooks"]["completed"]["state"] == "delivered"


def test_a_job_on_the_worker_delivers_start_and_completed(client, settings) -> None:
    """Through the API and the session's worker: the document shows the deliveries."""
    secret = signing_secret(settings.webhook_secret, settings.data_dir)
    receiver = Receiver(secret).start()
    try:
        r = client.post(
            "/generate",
            json={"steps": 5, "webhook": receiver.url, "webhook_events": ["start", "completed"]},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.json()["webhook"]["events"] == ["start", "completed"]
        assert wait_job(client, job_id)["status"] == "succeeded"
        receiver.wait_for(lambda: len(receiver.of(f"{job_id}.completed")) == 1)
        done = receiver.of(f"{job_id}.completed")[0]
        assert done.verified and done.body["status"] == "succeeded"
        assert done.body["result"]["images"], done.body
        start = receiver.of(f"{job_id}.start.1")
        assert start and start[0].verified and start[0].body["status"] == "running"
        deadline = time.monotonic() + 10
        while True:
            doc = client.get(f"/jobs/{job_id}").json()
            if doc["webhook"]["deliveries"]["completed"]["state"] == "delivered":
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.05)
        assert "token" not in json.dumps(doc)  # the URL's query is not shown
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    "body",
    [
        {"webhook": "ftp://example.com/x"},
        {"webhook": "http://user:pw@example.com/x"},
        {"webhook": "not a url"},
        {"webhook": "https://example.com:99999/x"},
        {"webhook": "https://example.com/x", "webhook_events": ["finished"]},
        {"webhook": "https://example.com/x", "webhook_events": ["start", "start"]},
        {"webhook": "https://example.com/x", "webhook_events": []},
    ],
)
def test_bad_webhooks_are_refused_with_422(client, body) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == 422, r.text
    assert "webhook" in r.text
