"""The control plane's fast paths against a real Redis (and, for consumption, the session's
real Celery worker): task messages written by the job store, the finish channel, long
polls, histogram bins."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from svc_helpers import make_settings, store_for

from app.core.jobs.names import GENERATE_TASK
from app.core.queue import TaskMessages, make_celery, pending_task_ids
from app.core.stats import RUN_BUCKETS, cumulative_buckets, histogram_fields


@pytest.fixture
def local(redis_url, tmp_path):
    """Settings on a key prefix of their own."""
    return make_settings(redis_url, tmp_path, job_ttl=600)


@pytest.fixture
def store(local):
    s = store_for(local)
    yield s
    for key in s.r.keys(local.key_prefix + "*"):
        s.r.delete(key)


def _sent_by_celery(store, settings, job_id: str) -> dict:
    """What ``celery.send_task`` itself LPUSHes for ``job_id``."""
    make_celery(settings).send_task(GENERATE_TASK, args=[job_id], task_id=job_id)
    raw = store.r.lpop(settings.key_prefix + "gen")
    return json.loads(raw)


def test_task_message_equals_what_celery_sends(store, local):
    """The message the store pushes is the one Celery and kombu would have published: same
    headers, properties and body; only the random delivery tag differs."""
    celery = make_celery(local)
    messages = TaskMessages(celery, local.key_prefix)
    job_id = "5b0c9a3e-7f2d-4e1a-9c8b-0d1e2f3a4b5c"
    key, raw = messages.encode(GENERATE_TASK, job_id)
    assert key == local.key_prefix + "gen"
    ours = json.loads(raw)
    theirs = _sent_by_celery(store, local, job_id)
    for m in (ours, theirs):
        assert m["properties"].pop("delivery_tag")
        m["properties"].pop("reply_to")  # Celery's per-thread id; no results are kept
        m["headers"].pop("origin")  # process name@host
        m["body"] = json.loads(__import__("base64").b64decode(m["body"]))
    assert ours == theirs


def test_create_pushes_the_message_atomically(store, local):
    """A created job and its message appear together; a refused create (queue full) and an
    idempotent replay push nothing."""
    messages = TaskMessages(make_celery(local), local.key_prefix)
    broker = local.key_prefix + "gen"
    job_id = "1b0c9a3e-7f2d-4e1a-9c8b-0d1e2f3a4b5c"
    msg = messages.encode(GENERATE_TASK, job_id)
    sub = store.create("generate", {}, job_id=job_id, message=msg, idem_key="k")
    assert sub.created and sub.position == 0 and sub.doc["status"] == "queued"
    assert store.r.llen(broker) == 1
    assert job_id in pending_task_ids(store.r, local, "gen")
    replay = store.create(
        "generate", {}, job_id="2b0c9a3e-7f2d-4e1a-9c8b-0d1e2f3a4b5c", message=msg, idem_key="k"
    )
    assert not replay.created and replay.job_id == job_id
    assert store.r.llen(broker) == 1
    from app.core.store import QueueFull

    with pytest.raises(QueueFull):
        store.create("generate", {}, message=msg, queue_limit=1)
    assert store.r.llen(broker) == 1


def test_every_terminal_transition_publishes_the_job_id(store):
    """finish, cancel of a queued job and a reaper's final failure all announce the job on
    the finished channel; claim, renew and requeue do not."""
    pubsub = store.r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.finished_channel())
    a = store.create("generate", {}).job_id
    b = store.create("generate", {}).job_id
    c = store.create("generate", {}).job_id
    claim = store.claim(a, "generate", "w")
    store.renew("generate", {a: claim.attempt}, {a: {"step": 1, "total": 2}})
    store.finish(a, "generate", "succeeded", claim.attempt)
    store.cancel(b, "generate")
    claim_c = store.claim(c, "generate", "w")
    assert store.requeue(c, "generate", claim_c.attempt) == "requeued"
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        m = pubsub.get_message(timeout=0.5)
        if m:
            got.append(m["data"])
    assert got == [a, b]
    assert pubsub.get_message(timeout=0.3) is None
    pubsub.close()


def test_histograms_store_bins_and_read_cumulative(store):
    """One observation writes its own bin, sum and count (3 fields); read back, the buckets
    are cumulative as Prometheus wants them."""
    assert len(histogram_fields("run_seconds", 0.3, RUN_BUCKETS)) == 3
    store.observe("run_seconds", [0.05, 0.3, 0.3, 9999.0], RUN_BUCKETS)
    stats = store.stats()
    cum = dict(cumulative_buckets(stats, "run_seconds", RUN_BUCKETS))
    assert cum[0.1] == 1 and cum[0.25] == 1 and cum[0.5] == 3 and cum[7200.0] == 3
    assert cum["+Inf"] == 4 and stats["run_seconds_count"] == 4
    assert stats["run_seconds_sum"] == pytest.approx(9999.65)


def test_long_poll_returns_when_the_job_finishes(isolated):
    """GET /jobs/{id}?wait= answers as soon as the job finishes (no worker here: the test
    finishes it through the store), with the finished document; and after ``wait`` seconds
    with the current one when it does not."""
    s, c = isolated()
    store = store_for(s)
    with c:
        job = c.post("/generate", json={"checkpoint": "tiny", "steps": 2}).json()["id"]
        t0 = time.monotonic()
        r = c.get(f"/jobs/{job}", params={"wait": 0.6})
        assert r.status_code == 200 and r.json()["status"] == "queued"
        assert 0.55 <= time.monotonic() - t0 < 3

        def finish_later() -> None:
            time.sleep(0.5)
            claim = store.claim(job, "generate", "test")
            store.finish(job, "generate", "succeeded", claim.attempt, result={"images": []})

        threading.Thread(target=finish_later).start()
        t0 = time.monotonic()
        r = c.get(f"/jobs/{job}", params={"wait": 20})
        waited = time.monotonic() - t0
        assert r.json()["status"] == "succeeded"
        assert 0.4 <= waited < 5, waited  # woken by the finish, not by the 20 s limit
        t0 = time.monotonic()  # a finished job answers at once
        assert c.get(f"/jobs/{job}", params={"wait": 20}).json()["status"] == "succeeded"
        assert time.monotonic() - t0 < 2
        assert c.get(f"/jobs/{job}", params={"wait": 61}).status_code == 422
        assert c.get(f"/jobs/{job}", params={"wait": -1}).status_code == 422
        missing = "00000000-0000-4000-8000-000000000000"
        assert c.get(f"/jobs/{missing}", params={"wait": 1}).status_code == 404


def test_max_wait_holds_long_polls_shorter(isolated):
    """DDPM_MAX_WAIT (below a proxy's idle timeout, say) caps both long polls; the
    request's own wait is still checked against the declared 60 s."""
    s, c = isolated(max_wait=1.0)
    with c:
        t0 = time.monotonic()
        r = c.post(
            "/generate", json={"checkpoint": "tiny", "steps": 2}, headers={"Prefer": "wait=30"}
        )
        assert r.status_code == 202 and r.headers["Preference-Applied"] == "wait=1"
        assert 0.9 <= time.monotonic() - t0 < 5
        t0 = time.monotonic()
        r = c.get(f"/jobs/{r.json()['id']}", params={"wait": 30})
        assert r.status_code == 200 and r.json()["status"] == "queued"
        assert 0.9 <= time.monotonic() - t0 < 5
        assert c.get(f"/jobs/{r.json()['id']}", params={"wait": 61}).status_code == 422


def test_many_long_polls_share_one_subscription(isolated):
    """200 concurrent long polls on one event loop: one Redis subscription, every poll woken
    by its own job's finish."""
    from app.api.streaming.finish_watch import FinishWatch

    s, c = isolated()
    store = store_for(s)
    c.close()
    jobs = [store.create("generate", {}).job_id for _ in range(200)]

    async def scenario() -> list[str]:
        from app.api.streaming.aredis import AsyncRedis

        ar = AsyncRedis(s.broker_url, read_timeout=30, max_connections=16)
        watch = FinishWatch(ar, store.finished_channel())
        client = ar.get()

        async def one(job_id: str) -> str:
            doc = await watch.wait(job_id, lambda: store.aget(client, job_id), 20)
            return doc["status"]

        polls = [asyncio.create_task(one(j)) for j in jobs]
        await asyncio.sleep(0.5)
        assert watch.waiting() == 200
        clients = await client.pubsub_numsub(store.finished_channel())
        assert clients[0][1] == 1

        def finish_all() -> None:
            for j in jobs:
                claim = store.claim(j, "generate", "t")
                store.finish(j, "generate", "succeeded", claim.attempt)

        await asyncio.to_thread(finish_all)
        out = await asyncio.wait_for(asyncio.gather(*polls), 10)
        await watch.aclose()
        await ar.aclose()
        return out

    assert asyncio.run(scenario()) == ["succeeded"] * 200


def test_prefer_wait_parsing():
    from app.api.routes.jobs import preferred_wait

    assert preferred_wait(None) == 0
    assert preferred_wait("wait=5") == 5
    assert preferred_wait("respond-async, wait=12") == 12
    assert preferred_wait("WAIT = 3; foo") == 3
    assert preferred_wait("wait=999999") == 60
    assert preferred_wait("wait=-1") == 0 and preferred_wait("wait=1.5") == 0
    assert preferred_wait("handling=strict") == 0


def test_prefer_wait_answers_with_the_finished_job(client):
    """POST /generate with ``Prefer: wait=N`` (the session's real worker runs the job):
    one request, 200 and the succeeded document with its image."""
    r = client.post(
        "/generate",
        json={"checkpoint": "tiny", "steps": 2, "seed": 5},
        headers={"Prefer": "wait=30"},
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "succeeded"
    assert r.headers["Preference-Applied"] == "wait=30"
    assert r.headers["Location"] == f"/jobs/{doc['id']}"
    png = client.get(doc["result"]["images"][0]["url"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_prefer_wait_times_out_with_the_queued_job(isolated):
    """No worker: after the preferred wait the answer is the usual 202 with the queued job."""
    s, c = isolated()
    with c:
        t0 = time.monotonic()
        r = c.post(
            "/generate", json={"checkpoint": "tiny", "steps": 2}, headers={"Prefer": "wait=1"}
        )
        assert r.status_code == 202 and r.json()["status"] == "queued"
        assert r.json()["queue_position"] == 0
        assert r.headers["Preference-Applied"] == "wait=1"
        assert 0.9 <= time.monotonic() - t0 < 5
        r = c.post("/generate", json={"checkpoint": "tiny", "steps": 2})
        assert r.status_code == 202 and "Preference-Applied" not in r.headers
