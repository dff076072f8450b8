"""Out of memory in the engine, injected on the CPU: split what must be split, fail only
the job that cannot run alone, keep serving, and never change an image by splitting."""

from __future__ import annotations

import pytest
import torch
from svc_helpers import cpu_reference

import worker.generate.engine as engine_mod
from ddpm_core.acceleration import FastDenoiser
from worker.generate.engine import Engine, GenSpec

pytestmark = pytest.mark.timeout(120)

# Batches up to max_batch, in fp32: what the split does is visible only when the engine
# does not stop at the throughput knee first (the shipped default on a CPU).
AT_MEMORY_LIMIT = {"knee_fraction": 0.0, "autocast": "none"}


def _oom_model(cap: int) -> type[FastDenoiser]:
    """The engine's model wrapper, raising CUDA's out-of-memory error above ``cap`` rows."""

    class OOMAbove(FastDenoiser):
        raised: list[int] = []

        def forward(self, x, t, labels=None):
            if x.shape[0] > cap:
                OOMAbove.raised.append(x.shape[0])
                raise torch.OutOfMemoryError(f"injected: {x.shape[0]} rows > {cap}")
            return super().forward(x, t, labels)

    return OOMAbove


def _run_all(engine: Engine, specs: list[GenSpec]):
    # Submitted before the engine starts: the first step holds all of them.
    jobs = [engine.submit(s) for s in specs]
    engine.start()
    try:
        for j in jobs:
            assert j.wait(90)
    except BaseException:
        engine.stop()
        raise
    return jobs


def test_out_of_memory_splits_the_batch_and_images_do_not_change(ckpts, monkeypatch) -> None:
    model = _oom_model(cap=4)
    monkeypatch.setattr(engine_mod, "FastDenoiser", model)
    engine = Engine("cpu", max_batch=16, progress_interval=0.0, threads=1, **AT_MEMORY_LIMIT)
    specs = [
        GenSpec("a", ckpts["u"], "u", count=5, seed=1, steps=12, sampler="ddpm"),
        GenSpec("b", ckpts["u"], "u", count=4, seed=20, steps=9, sampler="ddim", eta=1.0),
        GenSpec("c", ckpts["u"], "u", count=3, seed=40, steps=7, sampler="ddim"),
    ]
    try:
        jobs = _run_all(engine, specs)
        assert [j.status for j in jobs] == ["succeeded"] * 3
        for spec, job in zip(specs, jobs, strict=True):
            torch.testing.assert_close(job.images, cpu_reference(spec), atol=2e-4, rtol=0)
        # 12 rows: 12 and both halves of 6 ran out; then the limit is 3 and nothing more does.
        assert model.raised == [12, 6, 6]
        assert max(engine.batch_sizes) == 3
        # It keeps serving, within the lowered limit.
        late = engine.submit(GenSpec("late", ckpts["u"], "u", count=6, seed=3, steps=5))
        assert late.wait(60) and late.status == "succeeded"
        assert model.raised == [12, 6, 6] and max(engine.batch_sizes) == 3
    finally:
        engine.stop()


def test_a_step_that_fails_after_drawing_noise_is_retried_with_the_same_noise(
    ckpts, monkeypatch
) -> None:
    """Out of memory in the update, after every row drew its noise: the rows' streams are
    rewound, so the retried halves draw the same noise (DDPM draws it at every step)."""
    real_step, raised = engine_mod.denoise_step, []

    def step(x, eps, coefs, noise=None, history=None):
        if x.shape[0] > 2:
            raised.append(x.shape[0])
            raise torch.OutOfMemoryError("injected in the update")
        return real_step(x, eps, coefs, noise, history)

    monkeypatch.setattr(engine_mod, "denoise_step", step)
    engine = Engine("cpu", max_batch=8, progress_interval=0.0, threads=1, **AT_MEMORY_LIMIT)
    specs = [GenSpec("a", ckpts["u"], "u", count=4, seed=7, steps=20, sampler="ddpm")]
    try:
        (job,) = _run_all(engine, specs)
        assert job.status == "succeeded" and raised == [4]
        torch.testing.assert_close(job.images, cpu_reference(specs[0]), atol=2e-4, rtol=0)
    finally:
        engine.stop()


def test_only_the_job_that_cannot_run_alone_fails(ckpts, monkeypatch) -> None:
    """One network row fits: a guided row (two rows, conditional and not) cannot run even
    alone, so its job fails as OutOfMemory; the others finish unchanged."""
    model = _oom_model(cap=1)
    monkeypatch.setattr(engine_mod, "FastDenoiser", model)
    engine = Engine("cpu", max_batch=16, progress_interval=0.0, threads=1, **AT_MEMORY_LIMIT)
    specs = [
        GenSpec("plain", ckpts["c"], "c", count=3, seed=1, steps=6, sampler="ddpm"),
        GenSpec("guided", ckpts["c"], "c", count=2, seed=5, steps=6, label=3, guidance_scale=2.0),
        GenSpec("label", ckpts["c"], "c", count=1, seed=9, steps=6, label=4, guidance_scale=1.0),
    ]
    try:
        plain, guided, label = _run_all(engine, specs)
        assert guided.status == "failed" and guided.error.type == "OutOfMemory"
        assert "injected" in guided.error.message
        for spec, job in ((specs[0], plain), (specs[2], label)):
            assert job.status == "succeeded"
            torch.testing.assert_close(job.images, cpu_reference(spec), atol=2e-4, rtol=0)
        after = engine.submit(GenSpec("after", ckpts["c"], "c", count=2, seed=2, steps=4))
        assert after.wait(60) and after.status == "succeeded"
    finally:
        engine.stop()
