"""Generation end to end: API -> Redis -> Celery worker -> engine -> result store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from svc_helpers import decode_png, make_client, submit, to_uint8, wait_job


@pytest.fixture(params=["disk", "redis"])
def store_client(request, settings, worker):
    """The API with each result store; the job records where its results went."""
    s = settings.model_copy(update={"result_store": request.param})
    with make_client(s) as c:
        yield c


def _pngs(client, doc) -> list[np.ndarray]:
    out = []
    for img in doc["result"]["images"]:
        r = client.get(img["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        out.append(decode_png(r.content))
    return out


def test_submit_poll_images(store_client):
    doc = submit(store_client, {"count": 3, "seed": 7, "steps": 8})
    assert doc["status"] in ("queued", "running")
    assert doc["request"]["seed"] == 7 and doc["request"]["checkpoint"] == "tiny@1"
    done = wait_job(store_client, doc["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["fraction"] == 1.0 and done["progress"]["step"] == 8
    assert [i["seed"] for i in done["result"]["images"]] == [7, 8, 9]
    images = _pngs(store_client, done)
    assert len(images) == 3 and all(a.shape == (16, 16) and a.dtype == np.uint8 for a in images)
    grid = store_client.get(done["result"]["grid_url"])
    assert grid.status_code == 200 and decode_png(grid.content).ndim == 2
    assert done["metrics"]["queue_seconds"] >= 0 and done["metrics"]["run_seconds"] > 0
    assert store_client.get(f"/jobs/{doc['id']}/images/3.png").status_code == 404


def test_same_seed_same_pngs_and_matches_library(client):
    import torch

    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.pipeline import generate

    body = {"count": 2, "seed": 123, "steps": 12, "sampler": "ddpm"}
    a = wait_job(client, submit(client, body)["id"])
    b = wait_job(client, submit(client, body)["id"])
    pa, pb = _pngs(client, a), _pngs(client, b)
    assert all(np.array_equal(x, y) for x, y in zip(pa, pb, strict=True))
    ckpt = load_checkpoint(client.app.state.api.registry.resolve("tiny@1").path)
    torch.set_num_threads(1)
    ref = to_uint8(generate(ckpt, count=2, seed=123, steps=12, sampler="ddpm"))
    for got, want in zip(pa, ref, strict=True):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++3m"])
def test_dpm_solver_jobs_match_the_library(client, sampler):
    import torch

    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.pipeline import generate

    body = {"count": 2, "seed": 77, "steps": 9, "sampler": sampler}
    done = wait_job(client, submit(client, body)["id"])
    assert done["status"] == "succeeded", done
    assert done["request"]["sampler"] == sampler and done["request"]["eta"] == 0.0
    ckpt = load_checkpoint(client.app.state.api.registry.resolve("tiny@1").path)
    torch.set_num_threads(1)
    ref = to_uint8(generate(ckpt, count=2, seed=77, steps=9, sampler=sampler))
    for got, want in zip(_pngs(client, done), ref, strict=True):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_image_i_equals_count_one_with_seed_plus_i(client):
    four = wait_job(client, submit(client, {"count": 4, "seed": 40, "steps": 10})["id"])
    imgs = _pngs(client, four)
    for i in (1, 3):
        one = wait_job(client, submit(client, {"count": 1, "seed": 40 + i, "steps": 10})["id"])
        (alone,) = _pngs(client, one)
        assert np.abs(alone.astype(int) - imgs[i].astype(int)).max() <= 1


def test_class_conditional_guidance_and_trajectory(client):
    body = {
        "count": 2,
        "seed": 3,
        "steps": 10,
        "checkpoint": "tinycond",
        "label": 4,
        "guidance_scale": 2.5,
        "trajectory_frames": 5,
    }
    done = wait_job(client, submit(client, body)["id"])
    assert done["status"] == "succeeded", done
    assert done["request"]["checkpoint"] == "tinycond@1" and done["request"]["label"] == 4
    gif = client.get(done["result"]["trajectory_url"])
    assert gif.status_code == 200 and gif.content[:6] in (b"GIF87a", b"GIF89a")
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(gif.content)).n_frames == 5


def _sse_events(text: str) -> list[tuple[str, str, dict]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":"
        )
        if "event" in fields:
            out.append((fields["id"], fields["event"], json.loads(fields["data"])))
    return out


def test_sse_progress_then_done_and_resume(client):
    job = submit(client, {"count": 1, "seed": 1, "steps": 60, "sampler": "ddpm"})
    with client.stream("GET", f"/jobs/{job['id']}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = _sse_events(text)
    kinds = [e[1] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "done" and "progress" in kinds
    assert events[-1][2]["status"] == "succeeded"
    assert kinds.index("progress") < kinds.index("done")
    # Resume after the first progress event: only the later events come back.
    first = next(e for e in events if e[1] == "progress")
    with client.stream(
        "GET", f"/jobs/{job['id']}/events", headers={"Last-Event-ID": first[0]}
    ) as r:
        again = _sse_events("".join(r.iter_text()))
    assert [e[0] for e in again] == [e[0] for e in events[events.index(first) + 1 :]]


def test_idempotency_key(client):
    h = {"Idempotency-Key": "abc-123-" + client.app.state.api.settings.key_prefix.strip(":")}
    a = submit(client, {"count": 1, "seed": 5, "steps": 5}, h)
    r = client.post("/generate", json={"count": 1, "seed": 5, "steps": 5}, headers=h)
    assert r.status_code == 202 and r.json()["id"] == a["id"]
    assert r.headers.get("idempotent-replayed") == "true"
    wait_job(client, a["id"])


def test_cancel_running_then_409(client):
    job = submit(client, {"count": 2, "seed": 1, "steps": 1000, "sampler": "ddpm"})
    wait_job(client, job["id"], statuses={"running"})
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 202
    done = wait_job(client, job["id"])
    assert done["status"] == "canceled"
    assert done["progress"]["fraction"] < 1.0
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert client.get(f"/jobs/{job['id']}/images/0.png").status_code == 404


def test_continuous_batching_shares_calls(client):
    """Jobs of different samplers and step counts in flight at once share network calls,
    and each still equals the library run alone.

    (Long deterministic DDIM chains of an untrained network are chaotic: a 1e-6 change of
    x_T moves the image by ~1, so exact comparisons use DDPM and short DDIM chains.)"""
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.pipeline import generate

    plan = [(300, "ddpm", None), (240, "ddpm", None), (200, "ddpm", None), (260, "ddpm", None)]
    plan += [(20, "ddim", 0.5), (15, "ddim", None)]
    bodies = [
        {"count": 1, "seed": 100 + i, "steps": s, "sampler": smp}
        | ({"eta": eta} if eta is not None else {})
        for i, (s, smp, eta) in enumerate(plan)
    ]
    jobs = [submit(client, b) for b in bodies]
    docs = [wait_job(client, j["id"]) for j in jobs]
    assert all(d["status"] == "succeeded" for d in docs), docs
    assert max(d["metrics"]["max_batch_size"] for d in docs) > 1
    # Jobs with different step counts (and samplers) shared network calls.
    sharing = [b for b, d in zip(bodies, docs, strict=True) if d["metrics"]["shared_calls"] > 0]
    assert len({(b["steps"], b["sampler"]) for b in sharing}) >= 2
    ckpt = load_checkpoint(client.app.state.api.registry.resolve("tiny@1").path)
    for body, doc in zip(bodies, docs, strict=True):
        (png,) = _pngs(client, doc)
        ref = generate(
            ckpt,
            count=1,
            seed=body["seed"],
            steps=body["steps"],
            sampler=body["sampler"],
            eta=body.get("eta"),
        )
        assert np.abs(png.astype(int) - to_uint8(ref)[0].astype(int)).max() <= 1, body


def test_metrics_and_readyz(client):
    wait_job(client, submit(client, {"count": 2, "seed": 9, "steps": 4})["id"])
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    text = client.get("/metrics").text
    for name in (
        "ddpm_jobs_total",
        "ddpm_queue_depth",
        "ddpm_images_generated_total",
        "ddpm_run_seconds_bucket",
        "ddpm_queue_seconds_bucket",
        "ddpm_workers",
        "ddpm_batch_size_bucket",
    ):
        assert name in text, name
    assert 'ddpm_jobs_total{kind="generate",status="succeeded"}' in text
