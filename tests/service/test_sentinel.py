"""Redis Sentinel: the settings, every client through the sentinels, acknowledgements that
wait for a replica (WAIT), and clients that find the new master after a failover.

A real group (tests/service/sentinel_group.py): master, replica, three sentinels, with
the shipped flags and docker/sentinel.conf. A replica "gone" is a SIGSTOPped one, and
faults are scheduled on what the sentinels report, never on sleeps."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sentinel_group import SentinelGroup  # noqa: E402
from svc_helpers import make_client, make_settings  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    g = SentinelGroup(tmp_path_factory.mktemp("sentinel"))
    try:
        g.up()
        yield g
    finally:
        g.down()


def _settings(g: SentinelGroup, tmp_path: Path, **over):
    return make_settings(
        "redis://127.0.0.1:1/0",  # never used: the sentinels take its place
        tmp_path,
        redis_sentinels=g.sentinels,
        redis_password=g.password,
        **over,
    )


class _Paused:
    """The replica stopped (SIGSTOP): connected, never acknowledging."""

    def __init__(self, g: SentinelGroup) -> None:
        self.proc = g.procs[f"node{1 - g.master_index()}"]

    def __enter__(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGCONT)


# -- settings -----------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["a:1,b", "a:26379,:1", "host:0", "a:1,a:1", "x:99999"])
def test_a_malformed_sentinel_list_is_one_line_naming_the_setting(value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    env["DDPM_REDIS_SENTINELS"] = value
    r = subprocess.run(
        [str(BIN / "ddpm"), "worker", "--queue", "gen"],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert r.returncode == 2, r.stderr
    assert "DDPM_REDIS_SENTINELS" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sentinel_settings_name_the_broker_and_default_to_replicated_acks(tmp_path) -> None:
    from app.core.queue import make_celery
    from app.core.settings import Settings

    s = Settings(redis_sentinels="s1:26379, s2:26380", redis_password="p@ss", data_dir=tmp_path)
    assert s.sentinel_nodes == [("s1", 26379), ("s2", 26380)]
    assert s.broker_url == "sentinel://:p%40ss@s1:26379/0;sentinel://:p%40ss@s2:26380/0"
    assert s.replicated_ack and s.redis_master_name == "ddpm"
    opts = make_celery(s).conf.broker_transport_options
    assert opts["master_name"] == "ddpm"
    assert opts["sentinel_kwargs"]["password"] == "p@ss"
    assert opts["global_keyprefix"] == s.key_prefix  # the transport's own options stay
    plain = Settings(redis_url="redis://h:1/0", data_dir=tmp_path)
    assert not plain.replicated_ack and plain.broker_url == "redis://h:1/0"
    assert "master_name" not in make_celery(plain).conf.broker_transport_options
    assert Settings(redis_sentinels="", data_dir=tmp_path).redis_sentinels is None
    assert not Settings(redis_sentinels="a:1", redis_replicated_ack=False).replicated_ack


def test_a_demoted_master_and_a_full_store_are_worth_a_retry() -> None:
    from app.core.store import NotReplicated, is_transient

    # redis-py strips the code from these messages: they are told by their class.
    assert is_transient(redis.exceptions.ReadOnlyError("You can't write against a replica"))
    assert is_transient(redis.exceptions.OutOfMemoryError("command not allowed"))
    assert is_transient(NotReplicated("no replica"))
    assert is_transient(redis.sentinel.MasterNotFoundError("none"))
    assert not is_transient(redis.exceptions.ResponseError("WRONGTYPE Operation"))


# -- a real group ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_creation_and_finish_wait_for_a_replica(group: SentinelGroup, tmp_path) -> None:
    from app.core.store import NotReplicated, store_from_settings

    store = store_from_settings(_settings(group, tmp_path, redis_ack_timeout=0.3))
    assert store.replicated_ack
    assert store.create("generate", {"n": 1}).created  # a replica in sync: no wait to speak of
    with _Paused(group):
        with pytest.raises(NotReplicated) as err:
            store.create("generate", {"n": 2}, idem_key="c:k1", body_fingerprint="f")
        job_id = err.value.job_id
        assert store.get(job_id)["status"] == "queued"  # stored on the master all the same
        assert "DDPM_REDIS_REPLICATED_ACK" in str(err.value)
    # The client's retry with its key: the same job, now confirmed.
    again = store.create("generate", {"n": 2}, idem_key="c:k1", body_fingerprint="f")
    assert (again.job_id, again.created) == (job_id, False)

    claim = store.claim(job_id, "generate", "w1")
    assert claim is not None
    with _Paused(group), pytest.raises(NotReplicated):
        store.finish(job_id, "generate", "succeeded", claim.attempt, result={"n": 2})
    # The worker retries (durably): recorded once, confirmed now; a stale attempt is refused.
    assert store.finish(job_id, "generate", "succeeded", claim.attempt, result={"n": 2})
    assert not store.finish(job_id, "generate", "succeeded", claim.attempt + 1)
    stats = store.stats()
    assert stats["jobs_finished:generate:succeeded"] == 1
    assert stats["finish_retries"] == 1 and stats["idempotent_replays"] == 1


@pytest.mark.timeout(60)
def test_post_generate_is_503_until_a_replica_confirms(group, data_dir, tmp_path) -> None:
    s = _settings(group, data_dir, redis_ack_timeout=0.3)
    body = {"count": 1, "steps": 2, "seed": 3}
    headers = {"Idempotency-Key": "sentinel-503"}
    with make_client(s) as c:
        with _Paused(group):
            r = c.post("/generate", json=body, headers=headers)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] and "Idempotency-Key" in r.json()["detail"]
        job_id = r.json()["detail"].split()[1]
        r = c.post("/generate", json=body, headers=headers)
        assert r.status_code == 202 and r.json()["id"] == job_id, r.text
        assert r.headers["Idempotent-Replayed"] == "true"
        assert c.get("/readyz").status_code == 503  # Redis answers; no worker here


@pytest.mark.timeout(120)
def test_every_client_finds_the_new_master(group: SentinelGroup, tmp_path) -> None:
    """SIGKILL of the master, then a coordinated failover (the old master demoted while
    clients hold connections to it: READONLY): the store, an asyncio client and a kombu
    connection all reach the new master without a restart; leases stay fenced."""
    from kombu import Connection

    from app.api.streaming.aredis import AsyncRedis
    from app.core.queue import kombu_patches, make_celery
    from app.core.store import redis_target, store_from_settings

    kombu_patches.apply()
    # Acks off: right after the kill the new master has no replica (the test above covers
    # waiting for one); this one is about finding the master.
    s = _settings(group, tmp_path, redis_replicated_ack=False)
    store = store_from_settings(s)
    aredis = AsyncRedis(redis_target(s), read_timeout=5, max_connections=4)
    loop = asyncio.new_event_loop()
    celery = make_celery(s)
    conn: Connection = celery.connection_for_write()
    queue = "sentinel-test"  # kombu's client adds the key prefix (global_keyprefix)

    def kombu_push(value: str) -> None:
        with conn.channel() as ch:
            ch.client.lpush(queue, value)

    async def aread(job_id: str) -> str:
        return (await aredis.get().hget(store.job_key(job_id), "status")) or ""

    job = store.create("generate", {"n": 1}).job_id
    claim = store.claim(job, "generate", "w1")
    assert claim is not None
    kombu_push("before")
    store.r.wait(1, 2000)  # the claim is on the replica (claims do not wait by themselves)
    assert loop.run_until_complete(aread(job)) == '"running"'

    old = group.node_ports[group.master_index()]
    group.kill(f"node{group.master_index()}")
    t0 = time.monotonic()
    failover = group.wait_failover(old)
    deadline = time.monotonic() + 30
    while True:  # the first calls after the kill may fail: the callers retry
        try:
            created = store.create("generate", {"n": 2}, idem_key="c:after")
            break
        except redis.RedisError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    recovered = time.monotonic() - t0
    print(f"\nfailover {failover:.1f} s; store writes again {recovered:.1f} s after the kill")
    assert created.created
    # Fencing holds on the new master: only the claimed attempt can finish.
    assert not store.finish(job, "generate", "succeeded", claim.attempt + 1)
    assert loop.run_until_complete(aread(job)) == '"running"'
    kombu_push("after")

    # The old master comes back and is made a replica; then a coordinated failover demotes
    # the current master under connections that clients hold: READONLY -> reconnect.
    group.start_node(group.node_ports.index(old))
    group.wait_replica_of_master()
    current = group.node_ports[group.master_index()]
    group.sentinel(0).execute_command("SENTINEL", "FAILOVER", "ddpm")
    group.wait_failover(current)
    deadline = time.monotonic() + 30
    while True:
        try:
            assert store.finish(job, "generate", "succeeded", claim.attempt, result={"ok": 1})
            break
        except redis.RedisError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert loop.run_until_complete(aread(job)) == '"succeeded"'
    kombu_push("last")
    master = group.node(group.master_index(), decode_responses=True)
    assert master.lrange(s.key_prefix + queue, 0, -1) == ["last", "after", "before"]
    assert store.get(created.job_id)["status"] == "queued"
    loop.run_until_complete(aredis.aclose())
    loop.close()
    conn.release()
