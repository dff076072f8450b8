"""Every transition of the job store against a real Redis: atomicity, fencing, limits,
idempotency, and the state after a crash between any two steps of a job's life."""

from __future__ import annotations

import time

import pytest
from svc_helpers import make_settings, store_for

from app.core.queue import make_celery, pending_task_ids
from app.core.store import ClientLimit, IdempotencyConflict, QueueFull


@pytest.fixture
def settings(redis_url, tmp_path):
    # A short lease so that expiry can be waited for; the chaos tests use the defaults.
    return make_settings(redis_url, tmp_path, job_ttl=600, lease_ttl=0.3, events_ttl=60)


@pytest.fixture
def store(settings):
    return store_for(settings)


def _events(store, job_id) -> list[str]:
    return [e[1] for e in store.read_events(job_id, count=10_000)]


def assert_consistent(store, job_id: str, kind: str = "generate") -> str:
    """The document, the queue, the leases, the client's in-flight set and the event
    stream agree; returns the status."""
    doc = store.get(job_id)
    status = doc["status"]
    in_queue = store.r.zscore(store.qkey(kind), job_id) is not None
    leased = store.r.zscore(store.lkey(kind), job_id) is not None
    in_flight = store.r.zscore(store.key("inflight", doc["client"]), job_id) is not None
    events = _events(store, job_id)
    if status == "queued":
        assert in_queue and not leased and in_flight, doc
    elif status == "running":
        assert leased and not in_queue and in_flight, doc
    else:
        assert not (in_queue or leased or in_flight), doc
        assert events[-2:] == ["status", "done"] and events.count("done") == 1, events
        assert not store.r.exists(store.job_key(job_id, "cancel"))
    return status


def test_lifecycle_progress_and_ttls(store, settings):
    sub = store.create("generate", {"count": 1}, client="anon")
    assert sub.created and assert_consistent(store, sub.job_id) == "queued"
    assert store.queue_position(sub.job_id) == 0
    claim = store.claim(sub.job_id, "generate", "w1")
    assert claim.attempt == 1 and claim.doc["status"] == "running" and claim.doc["worker"] == "w1"
    assert assert_consistent(store, sub.job_id) == "running"
    assert store.claim(sub.job_id, "generate", "w2") is None  # a duplicate message: no-op
    other = store.create("generate", {}).job_id
    assert store.claim(other, "train", "w3") is None  # a message of the wrong kind
    assert assert_consistent(store, other) == "queued"
    data = {"step": 3, "total": 10, "fraction": 0.3, "loss": 0.5}
    assert store.renew("generate", {sub.job_id: 1}, {sub.job_id: data}) == {sub.job_id: 0}
    assert store.get(sub.job_id)["progress"] == {"step": 3, "total": 10, "fraction": 0.3}
    assert store.read_events(sub.job_id)[-1][2] == data
    assert store.finish(sub.job_id, "generate", "succeeded", 1, result={"images": []})
    assert assert_consistent(store, sub.job_id) == "succeeded"
    assert not store.finish(sub.job_id, "generate", "failed", 1)  # terminal stays terminal
    assert 0 < store.r.ttl(store.job_key(sub.job_id)) <= settings.job_ttl
    assert 0 < store.r.ttl(store.job_key(sub.job_id, "events")) <= settings.events_ttl
    stats = store.stats()
    assert stats["jobs_submitted:generate"] == 2 and stats["jobs_finished:generate:succeeded"] == 1


def test_idempotency_is_bound_to_the_body(store):
    a = store.create("generate", {"n": 1}, idem_key="c1:generate:k", body_fingerprint="fp1")
    again = store.create("generate", {"n": 1}, idem_key="c1:generate:k", body_fingerprint="fp1")
    assert again.job_id == a.job_id and not again.created
    with pytest.raises(IdempotencyConflict) as err:
        store.create("generate", {"n": 2}, idem_key="c1:generate:k", body_fingerprint="fp2")
    assert err.value.job_id == a.job_id
    other = store.create("generate", {"n": 1}, idem_key="c2:generate:k", body_fingerprint="fp1")
    assert other.created and other.job_id != a.job_id  # another client's scope
    assert store.stats()["jobs_submitted:generate"] == 2
    store.r.expire(store.key("idem", "c1:generate:k"), 5)
    claim = store.claim(a.job_id, "generate", "w")
    assert store.finish(a.job_id, "generate", "succeeded", claim.attempt)
    assert store.r.ttl(store.key("idem", "c1:generate:k")) > 5  # as long as the job


def test_queue_and_client_limits(store):
    for _ in range(2):
        store.create("generate", {}, client="a", queue_limit=3, client_limit=2)
    with pytest.raises(ClientLimit):
        store.create("generate", {}, client="a", queue_limit=3, client_limit=2)
    third = store.create("generate", {}, client="b", queue_limit=3, client_limit=2)
    with pytest.raises(QueueFull):
        store.create("generate", {}, client="c", queue_limit=3, client_limit=2)
    assert store.cancel(third.job_id, "generate")[0] == "canceled"  # frees a place for b and all
    store.create("generate", {}, client="b", queue_limit=3, client_limit=2)
    assert store.queue_depth("generate") == 3


def test_cancel_queued_running_finished(store):
    q = store.create("generate", {}).job_id
    assert store.cancel(q, "generate") == ("canceled", None)
    assert assert_consistent(store, q) == "canceled"
    assert store.claim(q, "generate", "w") is None  # its message arrives later: nothing runs
    r = store.create("generate", {}).job_id
    claim = store.claim(r, "generate", "w")
    assert store.cancel(r, "generate") == ("requested", None)
    assert store.renew("generate", {r: claim.attempt}) == {r: 1}  # the worker sees it
    assert store.finish(r, "generate", "canceled", claim.attempt, error={"type": "Canceled"})
    assert store.cancel(r, "generate") == ("finished", "canceled")
    assert store.cancel("0b7c6f0e-6a51-4c55-9d1b-3f2a3c1e8d11", "generate") == ("gone", None)


def test_fencing_a_stale_worker_changes_nothing(store):
    job = store.create("generate", {}).job_id
    first = store.claim(job, "generate", "w1")
    assert store.requeue(job, "generate") == "alive"  # its lease is still valid
    time.sleep(0.4)  # the lease (0.3 s) expires: w1 is presumed dead
    assert store.requeue(job, "generate") == "requeued"
    assert assert_consistent(store, job) == "queued"
    second = store.claim(job, "generate", "w2")
    assert second.attempt == 2
    # w1 wakes up: its renewals, progress and outcome are all refused
    assert store.renew("generate", {job: first.attempt}, {job: {"step": 9}}) == {job: -1}
    assert not store.finish(job, "generate", "succeeded", first.attempt, result={"by": "w1"})
    assert store.get(job)["progress"]["step"] == 0
    assert store.finish(job, "generate", "succeeded", second.attempt, result={"by": "w2"})
    assert store.get(job)["result"] == {"by": "w2"} and store.get(job)["attempts"] == 2
    assert assert_consistent(store, job) == "succeeded"
    assert store.stats()["jobs_requeued:generate"] == 1


def test_requeue_fails_after_max_attempts_and_honours_cancel(store):
    job = store.create("generate", {}).job_id
    for attempt in range(1, store.max_attempts + 1):
        claim = store.claim(job, "generate", f"w{attempt}")
        assert claim.attempt == attempt
        time.sleep(0.35)
        outcome = store.requeue(job, "generate")
    assert outcome == "failed"
    doc = store.get(job)
    assert doc["error"]["type"] == "WorkerLost" and assert_consistent(store, job) == "failed"
    other = store.create("generate", {}).job_id
    store.claim(other, "generate", "w")
    store.cancel(other, "generate")
    time.sleep(0.35)
    assert store.requeue(other, "generate") == "canceled"
    assert assert_consistent(store, other) == "canceled"


def test_a_worker_gives_its_job_back(store):
    job = store.create("generate", {}).job_id
    claim = store.claim(job, "generate", "w")
    assert store.requeue(job, "generate", attempt=claim.attempt + 1) == "stale"
    assert store.requeue(job, "generate", attempt=claim.attempt) == "requeued"
    assert assert_consistent(store, job) == "queued"


@pytest.mark.parametrize("crash_after", ["create", "claim", "progress", "results stored", "finish"])
def test_a_crash_between_any_two_steps_leaves_a_recoverable_state(store, settings, crash_after):
    """A job's life is create -> send -> claim -> progress -> store results -> finish ->
    ack. Stop it after each step (the process died there), then let the reaper and a new
    worker do their part: the job ends succeeded once, consistent everywhere."""
    from worker.reaper import Reaper

    celery = make_celery(settings)
    reaper = Reaper(store, celery, settings.model_copy(update={"redispatch_after": 0.2}))
    steps = ["create", "claim", "progress", "results stored", "finish"]
    job = store.create("generate", {}).job_id
    attempt = None
    for step in steps[1 : steps.index(crash_after) + 1]:
        if step == "claim":
            attempt = store.claim(job, "generate", "dying").attempt
        elif step == "progress":
            store.renew("generate", {job: attempt}, {job: {"step": 1, "total": 2}})
        elif step == "finish":
            store.finish(job, "generate", "succeeded", attempt, result={"by": "first"})
    assert assert_consistent(store, job) in ("queued", "running", "succeeded")
    # recovery: the reaper re-queues (lease expired) or re-sends (no message was sent)
    time.sleep(0.4)
    reaper.reap_expired_leases()
    reaper.redispatch_lost_messages()
    if crash_after != "finish":
        assert store.get(job)["status"] == "queued"
        assert job in pending_task_ids(store.r, settings, "gen")
        again = store.claim(job, "generate", "w2")
        assert store.finish(job, "generate", "succeeded", again.attempt, result={"by": "w2"})
    else:
        assert store.claim(job, "generate", "w2") is None  # the redelivered message: no-op
    assert assert_consistent(store, job) == "succeeded"
    assert store.stats()["jobs_finished:generate:succeeded"] == 1
    for key in store.r.keys(settings.key_prefix + "gen*"):  # the test's messages
        store.r.delete(key)


@pytest.mark.parametrize("delivered_ago", [120.0, 0.0])
def test_a_message_delivered_long_ago_to_a_job_still_queued_is_sent_again(
    store, settings, delivered_ago
):
    """A worker that received a job's message and died before its claim (or whose claim a
    failover lost) leaves the message in kombu's unacked set until the visibility timeout
    (an hour). The job is still queued: once the delivery is older than redispatch_after
    the reaper sends another; a fresh delivery is left to its worker."""
    import json

    from app.core.jobs.ids import new_job_id
    from app.core.jobs.names import GENERATE_TASK
    from app.core.queue import TaskMessages
    from worker.reaper import Reaper

    celery = make_celery(settings)
    reaper = Reaper(store, celery, settings.model_copy(update={"redispatch_after": 30}))
    job_id = new_job_id()
    message = TaskMessages(celery, settings.key_prefix).encode(GENERATE_TASK, job_id)
    store.create("generate", {}, job_id=job_id, message=message)
    # Submitted 200 s ago; delivered as kombu does it (list -> unacked + its index).
    p = settings.key_prefix
    store.r.zadd(store.qkey("generate"), {job_id: time.time() - 200})
    body = store.r.rpop(p + "gen")
    assert json.loads(body)["headers"]["id"] == job_id
    tag = f"tag-{job_id}"
    store.r.hset(p + "unacked", tag, json.dumps([json.loads(body), "", "gen"]))
    store.r.zadd(p + "unacked_index", {tag: time.time() - delivered_ago})
    try:
        assert job_id in pending_task_ids(store.r, settings, "gen")  # delivered: pending
        reaper.redispatch_lost_messages()
        resent = [json.loads(m)["headers"]["id"] for m in store.r.lrange(p + "gen", 0, -1)]
        assert resent == ([job_id] if delivered_ago else [])
    finally:
        store.r.delete(p + "gen", p + "unacked", p + "unacked_index")


def test_api_submit_replays_and_refuses_reused_keys(isolated):
    s, c = isolated(max_jobs_per_client=0)
    h = {"Idempotency-Key": "abc"}
    a = c.post("/generate", json={"count": 1, "seed": 1}, headers=h)
    b = c.post("/generate", json={"count": 1, "seed": 1}, headers=h)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers["idempotent-replayed"] == "true"
    bad = c.post("/generate", json={"count": 2, "seed": 1}, headers=h)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "Idempotency-Key"
    admin = {"Authorization": "Bearer admin-secret", **h}
    t = c.post("/train", json={"name": "x", "options": {"steps": 1}}, headers=admin)
    assert t.status_code == 202 and t.json()["kind"] == "train"  # its own scope


def test_api_per_client_limit(isolated):
    _, c = isolated(max_jobs_per_client=2, api_keys="ka,kb")
    for _ in range(2):
        assert c.post("/generate", json={}, headers={"X-API-Key": "ka"}).status_code == 202
    r = c.post("/generate", json={}, headers={"X-API-Key": "ka"})
    assert r.status_code == 429 and r.headers["retry-after"]
    assert c.post("/generate", json={}, headers={"X-API-Key": "kb"}).status_code == 202


def test_expired_jobs_lose_their_results_and_runs(settings, tmp_path):
    """The reaper deletes the result files and training run folders of expired jobs."""
    from app.core.storage.results import DiskResults
    from app.core.store import JobStore
    from worker.reaper import Reaper

    short = JobStore(store_for(settings).r, settings.key_prefix, ttl=1, lease_ttl=0.3)
    keep = JobStore(store_for(settings).r, settings.key_prefix, ttl=600, lease_ttl=0.3)
    results = DiskResults(settings.data_dir)
    jobs = {}
    for name, st in (("old", short), ("new", keep)):
        job = st.create("train", {}).job_id
        claim = st.claim(job, "train", "w")
        results.put(job, "0.png", b"png", claim.attempt)
        (settings.data_dir / "runs" / job).mkdir(parents=True)
        assert st.finish(job, "train", "failed", claim.attempt, error={"type": "X"})
        jobs[name] = job
    time.sleep(2.1)  # "old" expired (1 s TTL); Redis dropped its document
    Reaper(keep, None, settings).delete_expired_results()
    assert results.get(jobs["old"], "0.png", 1) is None
    assert not (settings.data_dir / "runs" / jobs["old"]).exists()
    assert results.get(jobs["new"], "0.png", 1) == b"png"
    assert (settings.data_dir / "runs" / jobs["new"]).exists()


def test_train_queue_limit(isolated):
    _, c = isolated(train_queue_limit=1)
    admin = {"Authorization": "Bearer admin-secret"}
    body = {"name": "x", "options": {"steps": 1}}
    assert c.post("/train", json=body, headers=admin).status_code == 202
    r = c.post("/train", json=body, headers=admin)
    assert r.status_code == 429 and r.headers["retry-after"] == "5", r.text


def test_readyz_needs_a_consuming_gen_worker(isolated):
    s, c = isolated()
    store = store_for(s)
    assert c.get("/readyz").json()["reason"] == "no generation worker heartbeat"
    store.heartbeat("gen@a:1", {"queues": ["gen"], "consuming": False}, 10)
    r = c.get("/readyz")
    assert r.status_code == 503 and "consuming" in r.json()["reason"]
    store.heartbeat("gen@b:2", {"queues": ["gen"], "consuming": True}, 10)
    assert c.get("/readyz").status_code == 200
