"""The job store against a real Redis, the registry and result stores on disk."""

from __future__ import annotations

import pytest
from svc_helpers import make_settings, make_tiny_checkpoint, store_for

from app.registry import InvalidName, NotFound, ReadOnly, Registry, parse_ref
from app.results import DiskResults


@pytest.fixture
def store(redis_url, tmp_path):
    return store_for(make_settings(redis_url, tmp_path, job_ttl=600))


def test_job_lifecycle_and_ttls(store):
    job_id, created = store.create("generate", {"count": 1}, idem_key="k-1")
    assert created
    again, created2 = store.create("generate", {"count": 1}, idem_key="k-1")
    assert again == job_id and not created2
    assert store.queue_position(job_id) == 0
    ok, doc = store.start(job_id, "generate", "w1")
    assert ok and doc["status"] == "running" and doc["attempts"] == 1
    assert store.queue_position(job_id) is None
    ok, doc = store.start(job_id, "generate", "w2")  # a redelivery takes over
    assert ok and doc["attempts"] == 2
    assert store.finish(job_id, "generate", "succeeded", result={"images": []})
    assert not store.finish(job_id, "generate", "failed")  # terminal stays terminal
    assert store.get(job_id)["status"] == "succeeded"
    events = store.read_events(job_id)
    assert [e[1] for e in events][-1] == "done"
    store.request_cancel(job_id)
    for key in (store.job_key(job_id), store.job_key(job_id, "events"),
                store.job_key(job_id, "cancel"), store.key("idem", "k-1")):  # fmt: skip
        assert 0 < store.r.ttl(key) <= 600, key


def test_lease(store):
    job_id, _ = store.create("generate", {})
    assert store.acquire_lease(job_id, "a", 5)
    assert not store.acquire_lease(job_id, "b", 5)
    assert store.acquire_lease(job_id, "a", 5)  # refresh
    store.release_lease(job_id, "a")
    assert store.acquire_lease(job_id, "b", 5)


def test_events_are_capped(redis_url, tmp_path):
    s = store_for(make_settings(redis_url, tmp_path, events_maxlen=10))
    s.events_maxlen = 10
    job_id, _ = s.create("generate", {})
    for i in range(500):
        s.add_event(job_id, "progress", {"step": i})
    assert s.r.xlen(s.job_key(job_id, "events")) < 200


def test_registry_versions_publish_delete(tmp_path):
    reg = Registry(tmp_path / "data")
    src = make_tiny_checkpoint(tmp_path / "src")
    v1 = reg.publish(src, "m")
    v2 = reg.publish(src, "m")
    assert (v1.version, v2.version) == ("1", "2")
    assert reg.resolve("m").ref == "m@2" and reg.resolve("m@1").ref == "m@1"
    assert reg.resolve("m").config["image_size"] == 16
    from ddpm_core.builtin import list_builtin

    assert reg.names() == sorted(["m", *list_builtin()])
    reg.delete("m", "2")
    assert reg.resolve("m").ref == "m@1"
    assert reg.publish(src, "m").version == "3"  # version numbers are never reused
    reg.delete("m", "3")
    with pytest.raises(NotFound):
        reg.delete("m", "2")
    with pytest.raises(ReadOnly):
        reg.delete("m", "builtin")
    with pytest.raises(NotFound):
        reg.resolve("other")
    for bad in ("../x", "A", "-x", "x/y", "x@../1", "", "x@0"):
        with pytest.raises(InvalidName):
            parse_ref(bad)
    assert not list((tmp_path / "data" / "checkpoints" / "m").glob(".publish-*"))


def test_disk_results_reject_escapes(tmp_path):
    r = DiskResults(tmp_path)
    job = "0b7c6f0e-6a51-4c55-9d1b-3f2a3c1e8d11"
    r.put(job, "0.png", b"x")
    assert r.get(job, "0.png") == b"x" and r.get(job, "1.png") is None
    for name in ("../x.png", "a.txt", "grid.png/.."):
        with pytest.raises(ValueError):
            r.put(job, name, b"x")
    with pytest.raises(ValueError):
        r.get("../../etc", "0.png")


def test_builtin_checkpoints_are_listed_and_read_only(tmp_path):
    from ddpm_core.builtin import list_builtin

    if not list_builtin():
        pytest.skip("no built-in checkpoint shipped yet")
    name = list_builtin()[0]
    reg = Registry(tmp_path)
    assert name in reg.names()
    c = reg.resolve(name)
    assert c.builtin and c.version == "builtin" and c.config["image_size"] > 0
    with pytest.raises(ReadOnly):
        reg.delete(name, "builtin")
    mine = reg.publish(make_tiny_checkpoint(tmp_path / "src"), name)
    assert reg.resolve(name).ref == f"{name}@1" == mine.ref  # a published version wins
    assert reg.versions(name) == ["builtin", "1"]
