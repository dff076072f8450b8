"""The Python client and ``ddpm remote`` against a live ``ddpm serve`` (real processes)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

import numpy as np
import pytest
from client_helpers import Proxy, free_port, run_cli, submitted
from PIL import Image

from app.client import (
    ApiError,
    AsyncClient,
    Client,
    ClientError,
    JobCanceled,
    JobFailed,
    Progress,
    ServiceUnreachable,
)

pytestmark = pytest.mark.timeout(180)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _same_files(a, b) -> None:
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        assert np.array_equal(_pixels(a / name), _pixels(b / name)), name


# -- offline and remote give the same images --------------------------------------------------
def _remote_then_offline(served, args: list[str], on, off) -> str:
    """``ddpm remote generate`` then ``ddpm sample`` in the precision the service measured
    and ran (``metrics.precision``): each side chooses it by timing the network, and under
    load the two timings can choose differently."""
    remote = run_cli("remote", "generate", *args, "-o", str(on), env=served.env)
    assert remote.returncode == 0, remote.stderr
    job_id = re.search(r"\(job ([0-9a-f-]+),", remote.stdout).group(1)
    with Client(served.url) as client:
        precision = client.job(job_id).doc["metrics"]["precision"]
    autocast = {"fp32": "none", "bf16": "bf16"}[precision]
    offline = run_cli("sample", *args, "--autocast", autocast, "-o", str(off), env=served.env)
    assert offline.returncode == 0, offline.stderr
    return remote.stdout


def test_remote_generate_writes_what_ddpm_sample_writes(served, tmp_path):
    args = ["digits", "-n", "6", "--seed", "40", "--steps", "8", "--label", "3", "--no-progress"]
    out = _remote_then_offline(served, args, tmp_path / "on", tmp_path / "off")
    assert "6 images in" in out and "digits@builtin" in out
    assert sorted(os.listdir(tmp_path / "on"))[:2] == ["00000_seed40.png", "00001_seed41.png"]
    _same_files(tmp_path / "off", tmp_path / "on")

    # --nrow: the grid is tiled here as ddpm sample tiles it.
    args = ["digits", "-n", "3", "--seed", "7", "--steps", "5", "--nrow", "3", "--no-progress"]
    _remote_then_offline(served, args, tmp_path / "on3", tmp_path / "off3")
    assert _pixels(tmp_path / "on3" / "grid.png").shape == (20, 56)
    _same_files(tmp_path / "off3", tmp_path / "on3")


# -- the Python client ---------------------------------------------------------------------------
def test_job_wait_results_and_save(served, tmp_path):
    with Client(served.url) as client:
        job = client.generate(count=3, seed=11, steps=6, label=2, trajectory_frames=3)
        assert job.status in ("queued", "running") and job.request["seed"] == 11
        seen: list[Progress] = []
        assert job.wait(timeout=60, on_progress=seen.append) is job
        assert job.status == "succeeded" and job.done
        steps = [p.step for p in seen]
        assert steps == sorted(set(steps)) and steps[-1] == 6 and seen[-1].total == 6
        images = job.images()
        assert [im.size for im in images] == [(16, 16)] * 3
        assert job.grid().size == (38, 38)
        assert job.trajectory().n_frames == 3
        paths = job.save(tmp_path / "out")
        names = [p.name for p in paths]
        assert names == [
            "00000_seed11.png",
            "00001_seed12.png",
            "00002_seed13.png",
            "grid.png",
            "trajectory.gif",
        ]
        assert np.array_equal(_pixels(paths[1]), np.asarray(images[1]))
        again = client.job(job.id)
        assert again.refresh().status == "succeeded" and again.result == job.result
        with pytest.raises(ApiError) as err:
            job.cancel()
        assert err.value.status == 409


def test_typed_errors(served):
    with Client(served.url) as client:
        with pytest.raises(ApiError) as err:
            client.generate(count=1000)
        assert (err.value.status, err.value.field) == (422, "count")
        assert "at most" in err.value.reason
        with pytest.raises(ApiError) as err:
            client.generate(guidance_scale=2.0)
        assert err.value.field == "guidance_scale"
        with pytest.raises(ApiError) as err:
            client.job("00000000-0000-0000-0000-000000000000")
        assert err.value.status == 404 and err.value.field is None
        with pytest.raises(ApiError) as err:
            client.checkpoint("nope")
        assert err.value.status == 404

        job = client.generate(count=2, checkpoint="broken", steps=3)
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=60)
        assert failed.value.job is job and job.status == "failed"
        assert failed.value.error_type and failed.value.message
        with pytest.raises(JobFailed):
            job.images()


def test_cancel_running_job_raises_job_canceled(served):
    with Client(served.url) as client:
        job = client.generate(count=4, steps=1000, label=1)
        with pytest.raises(TimeoutError, match="after 0.3s"):
            job.wait(timeout=0.3)
        asked = []

        def cancel_once(p: Progress) -> None:
            if p.step >= 2 and not asked:
                asked.append(job.cancel().status)

        with pytest.raises(JobCanceled) as canceled:
            job.wait(timeout=60, on_progress=cancel_once)
        assert asked == ["running"]
        assert canceled.value.status == "canceled" and job.status == "canceled"


def test_unreachable_and_bad_url():
    with pytest.raises(ClientError, match="invalid service URL"):
        Client("localhost:8000")
    client = Client(f"http://127.0.0.1:{free_port()}", max_retries=2)
    with client, pytest.raises(ServiceUnreachable):
        client.checkpoints()


def test_wait_gives_up_when_the_api_stays_unreachable(served):
    proxy = Proxy(served.port, lambda m, p, n: "forward")
    with Client(proxy.url, reconnect_timeout=1.0) as client:
        job = client.generate(count=4, steps=1000, label=1)
        proxy.close()  # the API is gone for good
        started = time.monotonic()
        with pytest.raises(ServiceUnreachable, match=proxy.url):
            job.wait(timeout=60)
        assert time.monotonic() - started < 10
    with Client(served.url) as client:
        client.job(job.id).cancel()


def test_async_client_twenty_concurrent_generates(served):
    before = submitted(served.url)
    reports: list[int] = []

    async def on_progress(p: Progress) -> None:  # a coroutine callback is awaited
        reports.append(p.step)

    async def main():
        async with AsyncClient(served.url) as client:
            jobs = await asyncio.gather(
                *(client.generate(count=1, seed=100 + i, steps=4) for i in range(20))
            )
            done = await asyncio.gather(
                *(j.wait(timeout=120, on_progress=on_progress) for j in jobs)
            )
            images = await asyncio.gather(*(j.images() for j in done[:3]))
            return done, images

    done, images = asyncio.run(main())
    assert len({j.id for j in done}) == 20
    assert all(j.status == "succeeded" for j in done)
    assert [j.request["seed"] for j in done] == [100 + i for i in range(20)]
    assert all(len(ims) == 1 and ims[0].size == (16, 16) for ims in images)
    assert reports and max(reports) == 4
    assert submitted(served.url) - before == 20


# -- retries: lost answers, keep-alive races, full queues, streams ------------------------------
@pytest.mark.parametrize("loss", ["drop", "reset", "reset-now"])
def test_submit_whose_answer_is_lost_makes_one_job(served, loss, caplog):
    """The first POST /generate loses its answer (after the server made the job: FIN or
    RST), or meets a pooled keep-alive connection that is reset as the request goes out;
    the client retries with the same Idempotency-Key and the service holds one job."""
    fired = []

    def rule(method: str, path: str, n: int) -> str:
        # reset-now: only on a reused keep-alive connection
        first = method == "POST" and path == "/generate" and not fired
        if first and (loss != "reset-now" or n > 0):
            fired.append(path)
            return loss
        return "forward"

    proxy = Proxy(served.port, rule)
    before = submitted(served.url)
    try:
        with caplog.at_level(logging.INFO, "ddpm.client"), Client(proxy.url) as client:
            client.checkpoints()  # opens the keep-alive connection that the submit reuses
            job = client.generate(count=2, seed=5, steps=4)
            job.wait(timeout=60)
    finally:
        proxy.close()
    posts = [s for s in proxy.seen if s[0] == "POST"]
    assert [a for _, _, a in posts] == [loss, "forward"]
    assert submitted(served.url) - before == 1
    assert job.status == "succeeded" and job.request["seed"] == 5
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 1


def test_wait_reconnects_with_last_event_id_when_streams_end(served):
    """Every event stream ends after a few chunks (as the service's stream lifetime cap
    ends them): wait() resumes from the last event each time, so no event comes twice.
    (Streams that break instead: test_resilience.py restarts the API.)"""
    proxy = Proxy(served.port, lambda m, p, n: "cut" if p.endswith("/events") else "forward")
    try:
        with Client(proxy.url) as client:
            job = client.generate(count=2, seed=1, steps=40)
            seen: list[int] = []
            job.wait(timeout=90, on_progress=lambda p: seen.append(p.step))
    finally:
        proxy.close()
    streams = [s for s in proxy.seen if s[1].endswith("/events")]
    assert len(streams) >= 3
    assert seen == sorted(set(seen)) and seen[-1] == 40
    assert job.status == "succeeded"


def test_wait_falls_back_to_polling_on_429(served):
    body = b'{"detail": "too many open streams"}'
    busy = (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )

    def rule(method: str, path: str, n: int):
        return ("respond", busy) if path.endswith("/events") else "forward"

    proxy = Proxy(served.port, rule)
    try:
        with Client(proxy.url, poll_interval=0.1) as client:
            job = client.generate(count=2, seed=1, steps=200)
            seen: list[int] = []
            job.wait(timeout=90, on_progress=lambda p: seen.append(p.step))
    finally:
        proxy.close()
    assert job.status == "succeeded"
    assert sum(1 for s in proxy.seen if s[1].endswith("/events")) == 1
    assert sum(1 for s in proxy.seen if s[0] == "GET" and s[1] == f"/jobs/{job.id}") >= 2
    assert seen and seen == sorted(set(seen)) and seen[-1] == 200


# -- ddpm remote --------------------------------------------------------------------------------
def _one_line_error(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpm: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_remote_generate_writes_the_jobs_format(served, tmp_path):
    out = tmp_path / "webp"
    r = run_cli("remote", "generate", "-n", "3", "--seed", "5", "--steps", "4", "--nrow", "3",
                "--format", "webp", "--quality", "85", "-o", str(out), env=served.env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000_seed5.webp", "00001_seed6.webp", "00002_seed7.webp", "grid.webp"]
    assert r.stdout.strip().endswith("grid.webp")
    with Image.open(out / "grid.webp") as grid, Image.open(out / "00000_seed5.webp") as one:
        assert grid.format == one.format == "WEBP"
        assert grid.size == (3 * (one.size[0] + 2) + 2, one.size[1] + 4)  # --nrow 3


def test_remote_exit_codes(served, tmp_path):
    env = served.env
    r = run_cli("remote", "generate", "-n", "1000", "-o", str(tmp_path), env=env)
    assert r.returncode == 2 and "count: count must be at most" in _one_line_error(r)
    r = run_cli("remote", "generate", "--guidance", "2", "-o", str(tmp_path), env=env)
    assert r.returncode == 2 and "guidance_scale:" in _one_line_error(r)
    r = run_cli("remote", "generate", "nosuch", "-o", str(tmp_path), env=env)
    assert r.returncode == 2 and "nosuch" in _one_line_error(r)
    r = run_cli("remote", "job", "00000000-0000-0000-0000-000000000000", env=env)
    assert r.returncode == 2 and "not found" in _one_line_error(r)
    (tmp_path / "file").write_text("x")
    r = run_cli("remote", "generate", "-o", str(tmp_path / "file"), env=env)
    assert r.returncode == 2 and "not a directory" in _one_line_error(r)
    r = run_cli("remote", "generate", "--url", "localhost:1", env=env)
    assert r.returncode == 2 and "invalid service URL" in _one_line_error(r)
    r = run_cli("remote", "train", "x", "--follow", env=env)  # no DDPM_ADMIN_TOKEN
    assert r.returncode == 2 and "admin token" in _one_line_error(r)
    bad = env | {"DDPM_ADMIN_TOKEN": "wrong"}
    r = run_cli("remote", "train", "x", env=bad)
    assert r.returncode == 2 and "HTTP 403" in _one_line_error(r)
    r = run_cli("remote", "generate", "--nosuchflag", env=env)
    assert r.returncode == 2
    r = run_cli("remote", "generate", "--format", "jpeg", "--quality", "101", env=env)
    assert r.returncode == 2 and "--quality" in _one_line_error(r)

    # The job fails: 1, with the job's error.
    r = run_cli(
        "remote",
        "generate",
        "broken",
        "-n",
        "1",
        "--steps",
        "2",
        "-o",
        str(tmp_path / "b"),
        env=env,
    )
    assert r.returncode == 1 and "failed" in _one_line_error(r)
    # Unreachable: 1.
    down = env | {"DDPM_URL": f"http://127.0.0.1:{free_port()}"}
    r = run_cli("remote", "checkpoints", env=down)
    assert r.returncode == 1 and "service unreachable" in _one_line_error(r)


def test_remote_job_wait_cancel_and_checkpoints(served, tmp_path):
    env = served.env
    r = run_cli(
        "remote", "generate", "-n", "2", "--seed", "3", "--steps", "5", "--no-wait", env=env
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    r = run_cli("remote", "wait", job_id, "-o", str(tmp_path / "w"), env=env)
    assert r.returncode == 0 and f"job {job_id} succeeded" in r.stdout, r.stderr
    assert sorted(os.listdir(tmp_path / "w")) == ["00000_seed3.png", "00001_seed4.png", "grid.png"]
    r = run_cli("remote", "job", job_id, env=env)
    assert r.returncode == 0 and "succeeded" in r.stdout
    assert "seed=3" in r.stdout and "2 images" in r.stdout
    r = run_cli("remote", "job", job_id, "--json", env=env)
    assert r.returncode == 0 and f'"id": "{job_id}"' in r.stdout
    r = run_cli("remote", "cancel", job_id, env=env)
    assert r.returncode == 2 and "already succeeded" in _one_line_error(r)

    # A long job: cancel it from the shell, then wait exits 1.
    r = run_cli(
        "remote", "generate", "-n", "4", "--steps", "1000", "--label", "1", "--no-wait", env=env
    )
    job_id = r.stdout.strip()
    r = run_cli("remote", "wait", job_id, "--timeout", "0.5", "--no-progress", env=env)
    assert r.returncode == 1 and "still" in _one_line_error(r)
    r = run_cli("remote", "cancel", job_id, env=env)
    assert r.returncode == 0 and job_id in r.stdout, r.stderr
    r = run_cli("remote", "wait", job_id, "--no-progress", env=env)
    assert r.returncode == 1 and "canceled" in _one_line_error(r)

    r = run_cli("remote", "checkpoints", env=env)
    assert r.returncode == 0 and "digits@builtin *" in r.stdout and "broken@1" in r.stdout
    r = run_cli("remote", "checkpoints", "digits", "--json", env=env)
    assert r.returncode == 0 and '"latest": "builtin"' in r.stdout


def test_remote_train_follow_then_delete(served):
    env = served.env | {"DDPM_ADMIN_TOKEN": served.admin_token}
    sets = [
        "steps=3",
        "batch_size=8",
        "warmup=1",
        "timesteps=50",
        "default_steps=5",
        "sample_count=4",
    ]
    args = ["remote", "train", "tiny-e2e", "--follow"]
    for s in sets:
        args += ["--set", s]
    r = run_cli(*args, env=env, timeout=170)
    assert r.returncode == 0, r.stderr
    assert "published tiny-e2e@1" in r.stdout and "final loss" in r.stdout
    assert "3/3" in r.stderr and "loss=" in r.stderr  # the bar, fed by the event stream
    with Client(served.url, admin_token=served.admin_token) as client:
        info = client.checkpoint("tiny-e2e")
        assert info["latest"] == "1" and info["versions"][0]["meta"]["training_steps"] == 3
        client.delete_checkpoint("tiny-e2e@1")
        with pytest.raises(ApiError) as err:
            client.checkpoint("tiny-e2e")
        assert err.value.status == 404
    r = run_cli("remote", "train", "tiny-e2e", "--set", "steps=0", env=env)
    assert r.returncode == 2 and "steps" in _one_line_error(r)
