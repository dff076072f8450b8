"""Workers on hosts that share no disk: two generation workers and a train worker, each
with a data directory of its own, sharing only Redis and an S3-compatible object store
(moto_server over HTTP). A checkpoint trained after the gen workers started is served by
both, from their own verified caches; every job runs once; results come back through the
object store."""

from __future__ import annotations

import contextlib
import io
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from PIL import Image
from svc_helpers import WorkerProcess, make_client, make_settings, store_for, submit, wait_job

pytestmark = pytest.mark.timeout(300)
ADMIN = {"Authorization": "Bearer admin-secret"}


def test_two_gen_hosts_serve_a_freshly_trained_checkpoint(
    e2e_redis_url, object_store_url, s3_endpoint, tmp_path
):
    prefix = f"ddpm-test-{uuid.uuid4().hex[:10]}:"

    def host(name: str):
        return make_settings(
            e2e_redis_url,
            tmp_path / name,
            key_prefix=prefix,
            object_store=object_store_url,
            s3_endpoint_url=s3_endpoint,
            result_store="s3",
            default_checkpoint="digits",
        )

    api = host("api")
    store = store_for(api)
    workers = [
        WorkerProcess(host("gen1"), tmp_path / "gen1.log", queues="gen", concurrency=2),
        WorkerProcess(host("gen2"), tmp_path / "gen2.log", queues="gen", concurrency=2),
        WorkerProcess(host("train"), tmp_path / "train.log", queues="train", concurrency=1),
    ]
    try:
        for w in workers:
            w.wait_ready(store)
        with make_client(api) as client:
            body = {
                "name": "fresh",
                "options": {"steps": 20, "batch_size": 4, "warmup": 1, "timesteps": 50,
                            "default_steps": 5, "sample_count": 1, "measure_defaults": "off"},
            }  # fmt: skip
            r = client.post("/train", json=body, headers=ADMIN)
            assert r.status_code == 202, r.text
            doc = wait_job(client, r.json()["id"], timeout=120)
            assert doc["status"] == "succeeded", (doc, (tmp_path / "train.log").read_text()[-2000:])
            assert doc["result"]["checkpoint"] == "fresh@1"
            assert client.get("/checkpoints/fresh").json()["latest"] == "1"

            # 16 jobs, two of each seed: equal images whichever host ran them.
            jobs = [
                submit(client, {"checkpoint": "fresh", "seed": i % 8, "count": 1})["id"]
                for i in range(16)
            ]
            docs = [wait_job(client, j, timeout=120) for j in jobs]
            assert [d["status"] for d in docs] == ["succeeded"] * 16, docs
            assert {d["request"]["checkpoint"] for d in docs} == {"fresh@1"}
            assert [d["attempts"] for d in docs] == [1] * 16
            served = {d["metrics"]["worker"].split("@")[0] for d in docs}
            assert served == {workers[0].name.split("@")[0], workers[1].name.split("@")[0]}
            images = [client.get(f"/jobs/{j}/images/0.png") for j in jobs]
            assert all(r.status_code == 200 for r in images)
            assert all(images[i].content == images[i + 8].content for i in range(8))
            assert len({r.content for r in images}) == 8
            webp = submit(client, {"checkpoint": "fresh", "count": 2, "output_format": "webp"})
            webp = wait_job(client, webp["id"], timeout=120)
            assert webp["status"] == "succeeded", webp
        _presigned_urls_serve_the_results(api.model_copy(update={"result_url_seconds": 120}), webp)
    finally:
        for w in workers:
            w.stop()

    # Each job's files exist once, from its first and only attempt, in the object store.
    bucket, _, key_prefix = object_store_url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for job in jobs:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{key_prefix}/results/{job}/")
        assert [o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]] == ["a1_0.png"]
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{key_prefix}/results/{webp['id']}/")
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"])
    assert names == ["a1_0.webp", "a1_1.webp", "a1_grid.webp"]
    # Nothing went through a disk the hosts could have shared: each gen host has the
    # version in its own cache (keyed by content hash), no registry or result files.
    for name in ("gen1", "gen2"):
        data = Path(tmp_path / name)
        cached = [p.name for p in (data / "cache" / "checkpoints").iterdir()]
        assert len(cached) == 1 and cached[0].startswith("fresh@1-"), cached
        assert not (data / "checkpoints").exists() and not (data / "results").exists()
    assert not (tmp_path / "train" / "checkpoints").exists()
    assert not any((tmp_path / "train" / "runs").iterdir())  # uploaded, then removed


@contextlib.contextmanager
def _serving(settings) -> Iterator[str]:
    """The API on a loopback port, in this process (a real HTTP server)."""
    import uvicorn

    from app.api.main import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _presigned_urls_serve_the_results(settings, doc: dict) -> None:
    """With ``result_url_seconds``, result URLs redirect to the object store, whose
    presigned URLs need no credentials; the client follows them without its key."""
    from app.client import Client

    with make_client(settings) as client:
        url = doc["result"]["images"][1]["url"]
        r = client.get(url, follow_redirects=False)
        assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
        where = r.headers["location"]
        assert "X-Amz-Signature=" in where and "/results/" in where
        direct = httpx.get(where, timeout=10)
        assert direct.status_code == 200 and direct.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(direct.content)).format == "WEBP"
    with _serving(settings) as base, Client(base) as c:
        out = Path(tempfile.mkdtemp())
        written = c.job(doc["id"]).save(out)
        assert sorted(p.name for p in written) == sorted(
            [f"00000_seed{doc['request']['seed']}.webp",
             f"00001_seed{doc['request']['seed'] + 1}.webp", "grid.webp"]
        )  # fmt: skip
        assert (out / written[1].name).read_bytes() == direct.content
