"""The registry and the results in an S3-compatible object store (moto_server over HTTP,
the real boto3 client), with version numbers from a real Redis."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
import redis
from svc_helpers import make_settings, make_tiny_checkpoint

from app.core.checkpoints import make_registry
from app.core.checkpoints.object_registry import ObjectRegistry
from app.core.checkpoints.registry import InvalidCheckpoint, NotFound, ReadOnly, Registry
from app.core.storage.objstore import ObjectStore, ObjectStoreError
from app.core.storage.results import ObjectResults, make_result_store

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def make(redis_url, object_store_url, s3_endpoint, tmp_path):
    """registry(cache name) -> an ObjectRegistry on the test's bucket, prefix and Redis
    (each with a cache directory of its own: as on different hosts)."""
    prefix = f"ddpm-test-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)

    def build(cache: str = "host1", size: int = 8) -> ObjectRegistry:
        objects = ObjectStore(object_store_url, s3_endpoint)
        return ObjectRegistry(objects, client, prefix, tmp_path / cache / "cache", size)

    build.client, build.prefix = client, prefix  # type: ignore[attr-defined]
    return build


@pytest.fixture(scope="module")
def ckpt_dirs(tmp_path_factory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("src")
    out = {"plain": make_tiny_checkpoint(src / "plain", seed=0)}
    out["cond"] = make_tiny_checkpoint(src / "cond", num_classes=10, seed=1)
    return out


def test_publish_resolve_describe_materialize(make, ckpt_dirs, tmp_path) -> None:
    reg, other_host = make("host1"), make("host2")
    v1 = reg.publish(ckpt_dirs["plain"], "tiny", job_id="job-1")
    v2 = reg.publish(ckpt_dirs["cond"], "tiny")
    assert (v1.ref, v2.ref) == ("tiny@1", "tiny@2")
    # Another host sees both at once, from the manifests alone (JSON, no download).
    latest = other_host.resolve("tiny")
    assert latest.ref == "tiny@2" and latest.spec is not None and latest.spec.num_classes == 10
    assert not latest.path.exists()
    info = other_host.describe("tiny")
    assert [v["version"] for v in info["versions"]] == ["1", "2"] and info["latest"] == "2"
    assert info["versions"][0]["meta"]["note"] == "test"
    assert "tiny" in other_host.names() and "digits" in other_host.names()  # built-ins stay
    assert other_host.resolve("digits").builtin
    # Materialized once into a directory keyed by the manifest's hash, verified.
    path = other_host.materialize(other_host.resolve("tiny@1"))
    assert path.parent == tmp_path / "host2" / "cache" and path.name.startswith("tiny@1-")
    for name in ("config.json", "model.safetensors", "ema.safetensors", "meta.json"):
        assert (path / name).read_bytes() == (ckpt_dirs["plain"] / name).read_bytes()
    inode = path.stat().st_ino
    assert other_host.materialize(other_host.resolve("tiny@1")).stat().st_ino == inode
    assert (
        other_host.read_file(latest, "config.json")
        == (ckpt_dirs["cond"] / "config.json").read_bytes()
    )
    assert other_host.meta(v1)["note"] == "test"
    # Publishing again for the same job returns its version (an attempt run twice).
    assert reg.publish(ckpt_dirs["plain"], "tiny", job_id="job-1").ref == "tiny@1"
    assert reg.published_by("tiny", "job-1").ref == "tiny@1"


def test_versions_are_never_reused(make, ckpt_dirs) -> None:
    reg = make()
    for _ in range(2):
        reg.publish(ckpt_dirs["plain"], "nums")
    reg.delete("nums", "2")
    with pytest.raises(NotFound):
        reg.resolve("nums@2")
    assert reg.publish(ckpt_dirs["plain"], "nums").version == "3"
    # Redis lost its counter (a crash without persistence): the store's own record of
    # what was used (manifests and tombstones) keeps the numbers going up.
    make.client.delete(f"{make.prefix}registry:nums:next")
    assert reg.publish(ckpt_dirs["plain"], "nums").version == "4"
    assert reg.versions("nums") == ["1", "3", "4"]
    with pytest.raises(ReadOnly):
        reg.delete("digits", "builtin")
    with pytest.raises(NotFound):
        reg.delete("nums", "2")


def test_concurrent_publishers_on_two_hosts_get_distinct_versions(make, ckpt_dirs) -> None:
    regs = [make("a"), make("b")]
    got: list[str] = []

    def publish(reg: ObjectRegistry) -> None:
        for _ in range(3):
            got.append(reg.publish(ckpt_dirs["plain"], "race").version)

    threads = [threading.Thread(target=publish, args=(r,)) for r in regs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=int) == [str(i) for i in range(1, 7)]
    assert regs[0].versions("race") == [str(i) for i in range(1, 7)]


def test_files_without_a_manifest_are_invisible(make, ckpt_dirs) -> None:
    reg = make()
    # A publisher that died after uploading files, before its manifest (the commit point).
    reg.objects.put_bytes("checkpoints/ghost/1/config.json", b"{}")
    with pytest.raises(NotFound):
        reg.resolve("ghost")
    assert "ghost" not in reg.names()
    assert reg.publish(ckpt_dirs["plain"], "ghost").version == "2"  # 1 stays burnt


def test_tampered_files_are_refused(make, ckpt_dirs, tmp_path) -> None:
    reg = make()
    reg.publish(ckpt_dirs["plain"], "bad")
    reg.objects.put_bytes("checkpoints/bad/1/ema.safetensors", b"not the published bytes")
    with pytest.raises(InvalidCheckpoint, match="ema.safetensors does not match the sha256"):
        make("elsewhere").materialize(reg.resolve("bad@1"))
    cache = tmp_path / "elsewhere" / "cache"
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []
    # An invalid config is refused when resolving (from the manifest), with the field.
    manifest = json.loads(reg.objects.get_bytes("checkpoints/bad/1.json"))
    manifest["config"]["default_steps"] = 0
    reg.objects.put_bytes("checkpoints/bad/1.json", json.dumps(manifest).encode())
    with pytest.raises(InvalidCheckpoint, match="default_steps"):
        reg.resolve("bad@1")


def test_the_cache_keeps_the_most_recently_used_versions(make, ckpt_dirs, monkeypatch) -> None:
    import app.core.checkpoints.object_registry as mod

    monkeypatch.setattr(mod, "_KEEP_RECENT_S", -1.0)  # no grace period in this test
    reg = make("lru", size=2)
    for _ in range(3):
        reg.publish(ckpt_dirs["plain"], "lru")
    paths = [reg.materialize(reg.resolve(f"lru@{v}")) for v in ("1", "2")]
    reg.materialize(reg.resolve("lru@1"))  # 1 used again: 2 is now the oldest
    third = reg.materialize(reg.resolve("lru@3"))
    assert paths[0].is_dir() and third.is_dir() and not paths[1].exists()


def test_training_state_is_fetched_only_to_resume(make, tmp_path) -> None:
    reg = make()
    src = make_tiny_checkpoint(tmp_path / "run")
    (src / "train_state").mkdir()
    (src / "train_state" / "state.json").write_text('{"step": 3}')
    reg.publish(src, "state", move=True)
    assert not src.exists()  # moved: uploaded, then the local run directory removed
    ckpt = reg.resolve("state")
    assert not (reg.materialize(ckpt) / "train_state").exists()
    full = reg.materialize(ckpt, full=True)
    assert json.loads((full / "train_state" / "state.json").read_text()) == {"step": 3}


def test_results_in_the_object_store(object_store_url, s3_endpoint, redis_url, tmp_path) -> None:
    objects = ObjectStore(object_store_url, s3_endpoint)
    store = make_result_store("s3", tmp_path, redis.Redis.from_url(redis_url), "p:", 60, objects)
    assert isinstance(store, ObjectResults)
    job = str(uuid.uuid4())
    store.put(job, "0.png", b"png-1", attempt=1)
    store.put(job, "0.png", b"png-2", attempt=2)
    assert store.get(job, "0.png", 1) == b"png-1" and store.get(job, "0.png", 2) == b"png-2"
    assert store.get(job, "grid.png", 2) is None
    store.delete(job)
    assert store.get(job, "0.png", 2) is None
    with pytest.raises(ValueError):
        store.put(job, "../x.png", b"")


def test_settings_choose_the_registry(redis_url, object_store_url, s3_endpoint, tmp_path) -> None:
    s = make_settings(redis_url, tmp_path)
    assert type(make_registry(s)) is Registry
    s3 = make_settings(
        redis_url, tmp_path, object_store=object_store_url, s3_endpoint_url=s3_endpoint
    )
    assert isinstance(make_registry(s3), ObjectRegistry)
    with pytest.raises(ValueError, match="result_store s3 needs object_store"):
        make_settings(redis_url, tmp_path, result_store="s3")
    with pytest.raises(ValueError, match="object_store"):
        make_settings(redis_url, tmp_path, object_store="/mnt/share")


def test_an_unreachable_store_is_an_oserror(tmp_path) -> None:
    store = ObjectStore("s3://nowhere/x", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ObjectStoreError, match="unreachable") as err:
        store.get_bytes("k")
    assert isinstance(err.value, OSError)


def test_the_reaper_deletes_expired_results(object_store_url, s3_endpoint, redis_url, tmp_path):
    """Expired jobs lose their results in the object store too, not only on disk."""
    import time

    from app.core.settings import Settings
    from app.core.storage.results import ObjectResults
    from app.core.store import JobStore, store_from_settings
    from worker.reaper import Reaper

    s = Settings(redis_url=redis_url, data_dir=tmp_path, key_prefix=f"reap-{time.time_ns()}:")
    results = ObjectResults(ObjectStore(object_store_url, s3_endpoint))
    short = JobStore(store_from_settings(s).r, s.key_prefix, ttl=1, lease_ttl=0.3)
    job = short.create("generate", {}).job_id
    claim = short.claim(job, "generate", "w")
    results.put(job, "0.png", b"png", claim.attempt)
    assert results.get(job, "0.png", claim.attempt) == b"png"
    assert short.finish(job, "generate", "succeeded", claim.attempt)
    time.sleep(2.1)
    Reaper(short, None, s, [results]).delete_expired_results()
    assert results.get(job, "0.png", claim.attempt) is None
