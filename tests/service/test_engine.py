"""The continuous-batching engine in process (no Redis): equality, isolation, cancel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.pipeline import generate
from worker.generate.engine import Engine, GenSpec


@pytest.fixture
def engine():
    # fp32 (the references are), and every row in one call up to max_batch: these tests are
    # about rows sharing calls, which a measured throughput knee would make depend on timing.
    e = Engine(
        "cpu", max_batch=64, progress_interval=0.0, threads=1, autocast="none", knee_fraction=0.0
    ).start()
    yield e
    e.stop()


def _run(engine, specs):
    jobs = [engine.submit(s) for s in specs]
    for j in jobs:
        assert j.wait(120)
    return jobs


def test_mixed_rows_equal_library_alone(engine, ckpts):
    specs = [
        GenSpec("a", ckpts["u"], "u", count=3, seed=5, steps=30, sampler="ddpm"),
        GenSpec("b", ckpts["u"], "u", count=2, seed=9, steps=17, sampler="ddim", eta=0.5),
        GenSpec("c", ckpts["c"], "c", count=2, seed=1, steps=10, sampler="ddim", label=3,
                guidance_scale=2.0),
        GenSpec("d", ckpts["c"], "c", count=2, seed=1, steps=12, sampler="ddpm"),
        GenSpec("e", ckpts["c"], "c", count=1, seed=2, steps=12, sampler="ddpm", label=4,
                guidance_scale=1.0),
    ]  # fmt: skip
    jobs = _run(engine, specs)
    assert [j.status for j in jobs] == ["succeeded"] * 5
    assert max(engine.batch_sizes) > 3  # several jobs in one call
    for s, j in zip(specs, jobs, strict=True):
        ck = load_checkpoint(s.checkpoint_path)
        ref = generate(ck, s.count, s.seed, s.steps, s.sampler, s.eta, s.label, s.guidance_scale)
        torch.testing.assert_close(j.images, ref, atol=2e-4, rtol=0)


def test_max_batch_is_respected(ckpts):
    e = Engine("cpu", max_batch=3, threads=1, knee_fraction=0.0).start()
    try:
        jobs = _run(
            e, [GenSpec(str(i), ckpts["u"], "u", count=2, seed=i, steps=5) for i in range(3)]
        )
        assert all(j.status == "succeeded" for j in jobs)
        assert max(e.batch_sizes) == 3
    finally:
        e.stop()


def test_failing_jobs_fail_alone(engine, ckpts, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "config.json").write_text("{}")
    # Weights that overflow to inf: the image turns non-finite during sampling.
    import json

    from ddpm_core.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm_core.unet import UNet

    cfg = CheckpointConfig.from_dict(json.loads((Path(ckpts["u"]) / "config.json").read_text()))
    model = UNet(cfg.unet)
    with torch.no_grad():
        model.conv_out.weight.fill_(3e38)
    nan_dir = save_checkpoint(tmp_path / "nan", cfg, model)
    specs = [
        GenSpec("ok", ckpts["u"], "u", count=2, seed=1, steps=15, sampler="ddpm"),
        GenSpec("bad", str(bad_dir), "bad", count=1, seed=1, steps=5),
        GenSpec("nan", str(nan_dir), "nan", count=1, seed=1, steps=5, sampler="ddim"),
        GenSpec("label", ckpts["u"], "u", count=1, seed=1, steps=5, label=2),
    ]
    ok, bad, nan, label = _run(engine, specs)
    assert ok.status == "succeeded"
    assert bad.status == "failed" and bad.error.type == "CheckpointError"
    assert nan.status == "failed" and nan.error.type == "NonFinite"
    assert label.status == "failed" and "unconditional" in label.error.message


def test_cancel_mid_run_leaves_others_running(engine, ckpts):
    seen = threading.Event()

    def progress(step, total, frac):
        if step >= 5:
            seen.set()

    long = engine.submit(GenSpec("long", ckpts["u"], "u", count=1, seed=1, steps=1000,
                                 sampler="ddpm"), progress)  # fmt: skip
    other = engine.submit(GenSpec("other", ckpts["u"], "u", count=1, seed=2, steps=40,
                                  sampler="ddpm"))  # fmt: skip
    assert seen.wait(60)
    long.cancel.set()
    assert long.wait(30) and other.wait(60)
    assert long.status == "canceled" and other.status == "succeeded"
    ref = generate(load_checkpoint(ckpts["u"]), 1, 2, 40, "ddpm")
    torch.testing.assert_close(other.images, ref, atol=2e-4, rtol=0)


def test_trajectory_frames(engine, ckpts):
    (job,) = _run(engine, [GenSpec("t", ckpts["u"], "u", count=2, seed=1, steps=10,
                                   trajectory_frames=4)])  # fmt: skip
    assert len(job.frames) == 4 and job.frames[0].shape == (2, 1, 16, 16)
    torch.testing.assert_close(job.frames[-1], job.images)


def test_dpm_solver_rows_batch_with_ddpm_and_ddim_rows(engine, ckpts):
    """dpm++2m/3m rows, each with its own x0_hat history, share network calls with DDPM and
    DDIM rows of other step counts, also joining mid-run: every job gets the images of
    its sampler alone, and image i is still the image of seed s+i."""
    started = threading.Event()

    def progress(step, total, frac):
        if step >= 4:
            started.set()

    first = [
        GenSpec("a", ckpts["c"], "c", count=3, seed=5, steps=30, sampler="ddpm", label=2,
                guidance_scale=2.0),
        GenSpec("b", ckpts["c"], "c", count=2, seed=9, steps=17, sampler="dpm++2m", label=7,
                guidance_scale=3.0),
    ]  # fmt: skip
    jobs = [engine.submit(first[0], progress), engine.submit(first[1])]
    assert started.wait(60)
    later = [  # join while a and b are mid-chain: rows at different steps and histories
        GenSpec("c", ckpts["c"], "c", count=2, seed=1, steps=10, sampler="ddim", eta=0.5),
        GenSpec("d", ckpts["c"], "c", count=3, seed=20, steps=8, sampler="dpm++2m"),
        GenSpec("e", ckpts["c"], "c", count=1, seed=22, steps=8, sampler="dpm++2m"),
        GenSpec("g", ckpts["c"], "c", count=2, seed=30, steps=11, sampler="dpm++2m-sde", label=5,
                guidance_scale=2.0),
        GenSpec("f", ckpts["c"], "c", count=2, seed=3, steps=13, sampler="dpm++3m", label=1,
                guidance_scale=1.0),
    ]  # fmt: skip
    jobs += [engine.submit(s) for s in later]
    for j in jobs:
        assert j.wait(120)
    assert [j.status for j in jobs] == ["succeeded"] * 7
    assert max(engine.batch_sizes) >= 10  # the jobs really shared calls
    assert all(j.shared_calls > 0 for j in jobs[2:])
    ck = load_checkpoint(ckpts["c"])
    for s, j in zip(first + later, jobs, strict=True):
        ref = generate(ck, s.count, s.seed, s.steps, s.sampler, s.eta, s.label, s.guidance_scale)
        torch.testing.assert_close(j.images, ref, atol=2e-4, rtol=0)
    # Per-image seeds: job e (seed 22, alone) is image 2 of job d (seeds 20, 21, 22).
    torch.testing.assert_close(jobs[4].images[0], jobs[3].images[2], atol=2e-4, rtol=0)
    assert (jobs[3].images[0] - jobs[3].images[1]).abs().max() > 1e-2


def test_v_prediction_checkpoint_in_the_engine(engine, ckpts):
    """The engine reads the checkpoint's prediction type through its step tables."""
    specs = [
        GenSpec("v1", ckpts["v"], "v", count=2, seed=4, steps=9, sampler="dpm++2m", label=3,
                guidance_scale=2.0),
        GenSpec("v2", ckpts["v"], "v", count=2, seed=6, steps=11, sampler="ddpm"),
    ]  # fmt: skip
    jobs = _run(engine, specs)
    assert [j.status for j in jobs] == ["succeeded"] * 2
    ck = load_checkpoint(ckpts["v"])
    assert ck.config.prediction_type == "v_prediction"
    for s, j in zip(specs, jobs, strict=True):
        ref = generate(ck, s.count, s.seed, s.steps, s.sampler, s.eta, s.label, s.guidance_scale)
        torch.testing.assert_close(j.images, ref, atol=2e-4, rtol=0)
    # The same weights read as an epsilon model give other images.
    from ddpm_core.pipeline import step_table_for
    from ddpm_core.samplers import step_table

    eps_table = step_table(ck.schedule, 11, "ddpm", prediction_type="epsilon")
    assert step_table_for(ck, 11, "ddpm").prediction_type == "v_prediction"
    assert not torch.equal(eps_table.coefs, step_table_for(ck, 11, "ddpm").coefs)
