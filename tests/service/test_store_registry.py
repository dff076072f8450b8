"""The job store against a real Redis, the registry and result stores on disk."""

from __future__ import annotations

import pytest
from svc_helpers import make_settings, make_tiny_checkpoint, store_for

from app.core.checkpoints.registry import InvalidName, NotFound, ReadOnly, Registry, parse_ref
from app.core.storage.results import DiskResults


def test_events_are_capped(redis_url, tmp_path):
    s = store_for(make_settings(redis_url, tmp_path, events_maxlen=10))
    s.events_maxlen = 10
    job_id = s.create("generate", {}).job_id
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
