"""Live previews: a watched job's stream carries ``preview`` events pointing to a PNG grid
of its current x0 estimate; an unwatched job writes no preview at all. Also the store's
preview flag and its fencing, training previews, checkpoint grids and the web page."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from svc_helpers import decode_png, make_settings, store_for, submit, wait_job

from app.core.jobs.previews import PREVIEW_NAME


def _read_events(response, until, timeout: float = 60.0) -> list[tuple[str, str, dict]]:
    """Parse SSE from a streaming response until ``until(events)`` holds or ``done``."""
    out: list[tuple[str, str, dict]] = []
    buf = ""
    deadline = time.monotonic() + timeout
    for chunk in response.iter_text():
        buf += chunk
        while "\n\n" in buf:
            block, buf = buf.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1)
                for line in block.splitlines()
                if ": " in line and line[0] != ":"
            )
            if "event" in fields:
                out.append((fields["id"], fields["event"], json.loads(fields["data"])))
                if fields["event"] == "done" or until(out):
                    return out
        assert time.monotonic() < deadline, f"timed out; events so far: {out}"
    return out


def _previews(events):
    return [e[2] for e in events if e[1] == "preview"]


def _preview_files(data_dir, job_id):
    return sorted(p.name for p in (data_dir / "results" / job_id).glob(f"*{PREVIEW_NAME}"))


@pytest.mark.timeout(120)
def test_watched_job_streams_previews_that_decode(client, settings):
    # Long enough to watch, canceled once two previews were seen.
    job = submit(client, {"count": 4, "seed": 3, "steps": 1000, "sampler": "ddpm"})
    with client.stream("GET", f"/jobs/{job['id']}/events?preview=1") as r:
        assert r.status_code == 200
        events = _read_events(r, lambda ev: len(_previews(ev)) >= 2)
    previews = _previews(events)
    assert len(previews) >= 2, events
    first, second = previews[:2]
    assert 1 <= first["step"] < second["step"] < 1000 and first["total"] == 1000
    assert first["url"] == f"/jobs/{job['id']}/preview.png?step={first['step']}"
    png = client.get(second["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "no-store"
    grid = decode_png(png.content)
    # 4 images of 16x16 in a 2x2 grid with 2-pixel padding.
    assert grid.shape == (2 + 2 * 18, 2 + 2 * 18)
    assert grid[2:18, 2:18].std() > 0  # an image, not the padding
    client.post(f"/jobs/{job['id']}/cancel")
    doc = wait_job(client, job["id"])
    assert doc["status"] == "canceled"
    # The preview belongs to the attempt that made it.
    assert _preview_files(settings.data_dir, job["id"]) == [f"a{doc['attempts']}_{PREVIEW_NAME}"]


@pytest.mark.timeout(120)
def test_unwatched_job_writes_no_preview(client, settings):
    job = submit(client, {"count": 2, "seed": 4, "steps": 150, "sampler": "ddpm"})
    with client.stream("GET", f"/jobs/{job['id']}/events") as r:  # watched, not previewed
        events = _read_events(r, lambda ev: False)
    assert events[-1][1] == "done" and events[-1][2]["status"] == "succeeded"
    assert "progress" in [e[1] for e in events]
    assert _previews(events) == []
    assert _preview_files(settings.data_dir, job["id"]) == []
    assert client.get(f"/jobs/{job['id']}/preview.png").status_code == 404
    # Nobody asked: no flag either.
    store = store_for(settings)
    assert not store.r.exists(store.job_key(job["id"], "preview"))


def test_preview_png_of_unknown_job_is_404(client):
    r = client.get("/jobs/00000000-0000-4000-8000-000000000000/preview.png")
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    assert client.get("/jobs/not-a-job/preview.png").status_code == 422


def test_renew_reports_the_preview_flag_and_fences_preview_events(redis_url, tmp_path):
    s = make_settings(redis_url, tmp_path, lease_ttl=5.0)
    store = store_for(s)
    job_id = store.create("generate", {"count": 1}).job_id
    claim = store.claim(job_id, "generate", "w1")
    assert store.renew("generate", {job_id: claim.attempt}) == {job_id: 0}
    store.want_preview(job_id, ttl=5)
    assert 0 < store.r.pttl(store.job_key(job_id, "preview")) <= 5000
    data = {"step": 3, "total": 10, "url": f"/jobs/{job_id}/preview.png?step=3"}
    assert store.renew("generate", {job_id: claim.attempt}, {}, {job_id: data}) == {job_id: 2}
    store.cancel(job_id, "generate")  # running: a cancel request
    assert store.renew("generate", {job_id: claim.attempt}) == {job_id: 3}
    # A stale attempt writes no preview event.
    stale = {"step": 4, "total": 10, "url": "x"}
    assert store.renew("generate", {job_id: claim.attempt + 1}, {}, {job_id: stale}) == {job_id: -1}
    previews = [e[2] for e in store.read_events(job_id, count=100) if e[1] == "preview"]
    assert previews == [data]
    # The flag lapses by itself once nobody refreshes it.
    store.want_preview(job_id, ttl=0.05)
    time.sleep(0.15)
    assert store.renew("generate", {job_id: claim.attempt}) == {job_id: 1}


@pytest.mark.timeout(180)
def test_training_sample_grids_become_preview_events(client, settings):
    body = {
        "name": "previewed",
        "options": {
            "steps": 6,
            "batch_size": 4,
            "warmup": 1,
            "timesteps": 50,
            "default_steps": 3,
            "sample_every": 2,
            "sample_count": 4,
            "measure_defaults": "off",
        },
    }
    r = client.post("/train", json=body, headers={"Authorization": "Bearer admin-secret"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    with client.stream("GET", f"/jobs/{job_id}/events") as r:
        events = _read_events(r, lambda ev: False, timeout=150)
    assert events[-1][2]["status"] == "succeeded", events[-1]
    previews = _previews(events)
    assert [p["step"] for p in previews] == [2, 4], previews
    progress = [e[2] for e in events if e[1] == "progress"]
    assert all("loss" in p and "lr" in p for p in progress)
    png = client.get(previews[-1]["url"])
    assert png.status_code == 200
    assert decode_png(png.content).shape == (2 + 2 * 18, 2 + 2 * 18)  # 4 samples, 2x2


def test_checkpoint_samples_png(client, data_dir):
    from PIL import Image

    from ddpm_core.builtin import builtin_path

    r = client.get("/checkpoints/digits/builtin/samples.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (builtin_path("digits") / "samples.png").read_bytes()
    assert Image.open(io.BytesIO(r.content)).size[0] > 16
    # A published version without a grid, unknown names and versions, malformed ones.
    assert client.get("/checkpoints/tiny/1/samples.png").status_code == 404
    assert client.get("/checkpoints/tiny/9/samples.png").status_code == 404
    assert client.get("/checkpoints/nosuch/1/samples.png").status_code == 404
    r = client.get("/checkpoints/Bad!/1/samples.png")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "path.name"
    r = client.get("/checkpoints/tiny/v1/samples.png")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "path.version"
    grid = np.zeros((4, 4), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    (data_dir / "checkpoints" / "tiny" / "1" / "samples.png").write_bytes(buf.getvalue())
    try:
        r = client.get("/checkpoints/tiny/1/samples.png")
        assert r.status_code == 200 and r.content == buf.getvalue()
    finally:
        (data_dir / "checkpoints" / "tiny" / "1" / "samples.png").unlink()


def test_web_page_and_its_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert '<script type="module" src="/ui/app.js">' in r.text
    js = client.get("/ui/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/style.css").headers["content-type"].startswith("text/css")
    for bad in ("/ui/nope.js", "/ui/..%2Fmain.py", "/ui/index.html.bak", "/ui/app.py"):
        assert client.get(bad).status_code == 404, bad
    assert client.get("/docs").status_code == 200  # the OpenAPI page still works
    # The page loads nothing from elsewhere.
    assert "http://" not in r.text and "https://" not in r.text


def test_engine_hands_previews_only_while_watched_at_most_every_interval(tmp_path):
    """The engine calls on_preview only while the job's preview event is set, with the
    first 16 rows' x0 estimate, never more often than preview_interval."""
    import threading

    from svc_helpers import make_tiny_checkpoint

    from worker.generate.engine import Engine, GenSpec

    ckpt = str(make_tiny_checkpoint(tmp_path / "u"))
    engine = Engine("cpu", max_batch=64, threads=1, preview_interval=0.05).start()
    try:
        watched = threading.Event()
        calls: list[tuple[float, int, int, tuple]] = []

        def on_preview(step, total, x0):
            calls.append((time.monotonic(), step, total, tuple(x0.shape)))

        spec = GenSpec("p", ckpt, "u", count=20, seed=1, steps=200, sampler="ddpm")
        job = engine.submit(spec, preview=watched, on_preview=on_preview)
        while job._steps_done < 20 * 40 and not job.done.is_set():  # 40 steps unwatched
            time.sleep(0.01)
        assert calls == []
        watched.set()
        assert job.wait(120) and job.status == "succeeded"
    finally:
        engine.stop()
    assert len(calls) >= 2
    assert all(c[3] == (16, 1, 16, 16) and c[2] == 200 for c in calls)
    steps = [c[1] for c in calls]
    assert steps == sorted(steps) and steps[0] >= 40
    gaps = [b[0] - a[0] for a, b in zip(calls, calls[1:], strict=False)]
    assert min(gaps) >= 0.05 - 1e-3
