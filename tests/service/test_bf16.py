"""bf16 on the CPU: under bf16 the engine keeps every image its seed's image (within the
drift the CUDA tests bound), ``ddpm sample`` computes the same images as the engine,
and ``auto`` follows what the CPU has and what the model measures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from svc_helpers import cpu_reference, same_images

import ddpm_core.tuning as tuning
from app.cli.common import checkpoint_dir
from worker.generate.engine import Engine, GenSpec

pytestmark = pytest.mark.timeout(300)

DIGITS = str(checkpoint_dir("digits"))
NATIVE = tuning.cpu_bf16_capable()


def _run(specs: list[GenSpec], **engine_options):
    """Run ``specs`` in a fresh CPU engine; returns the jobs and the (stopped) engine."""
    engine = Engine("cpu", **engine_options).start()
    try:
        jobs = [engine.submit(s) for s in specs]
        for j in jobs:
            assert j.wait(240)
            assert j.status == "succeeded", j.error
        return jobs, engine
    finally:
        engine.stop()


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (emulated: minutes)")
def test_engine_bf16_images_stay_their_seeds_images() -> None:
    specs = [
        GenSpec("u", DIGITS, "digits", count=8, seed=0, steps=20, sampler="ddpm"),
        GenSpec("g", DIGITS, "digits", count=8, seed=50, steps=25, sampler="ddpm", label=3,
                guidance_scale=2.0),
        GenSpec("d", DIGITS, "digits", count=6, seed=9, steps=15, sampler="dpm++2m"),
    ]  # fmt: skip
    jobs, engine = _run(specs, threads=2, autocast="bf16")
    assert {j.precision for j in jobs} == {"bf16"}
    assert list(engine.info()["models"].values())[0]["precision"] == "bf16"
    for spec, job in zip(specs, jobs, strict=True):
        ref = cpu_reference(spec)
        assert (job.images - ref).abs().max() > 0  # really another precision
        same_images(job.images, ref, f"engine bf16 vs fp32, job {spec.job_id}")


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (emulated: minutes)")
def test_ddpm_sample_follows_the_setting_and_makes_the_engines_images(tmp_path) -> None:
    spec = GenSpec("s", DIGITS, "digits", count=4, seed=7, steps=20, sampler="ddpm")
    (job,), _ = _run([spec], threads=2, autocast="bf16")
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "sample", "digits", "-n", "4", "--seed", "7",
         "--steps", "20", "--sampler", "ddpm", "--autocast", "bf16", "-o", str(out),
         "--no-progress"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "bf16: autocast=bf16" in r.stdout
    cli = np.stack([np.asarray(Image.open(out / f"{i:05d}_seed{7 + i}.png")) for i in range(4)])
    served = job.pixels[..., 0]
    # bf16 rounds the network's input: fp32 differences of 1e-4 between the two code
    # paths flip roundings, so the images agree within the bf16 drift, not to the bit.
    as_float = [torch.from_numpy(a.astype(np.float32) / 127.5 - 1) for a in (cli, served)]
    same_images(*as_float, "ddpm sample bf16 vs the engine's bf16")
    assert np.abs(cli.astype(int) - served.astype(int)).mean() < 0.5  # uint8 levels


def test_auto_is_fp32_where_the_cpu_has_no_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(tuning, "cpu_bf16_capable", lambda: False)
    spec = GenSpec("a", DIGITS, "digits", count=2, seed=1, steps=4, sampler="ddim")
    (job,), _ = _run([spec], threads=1, autocast="auto")
    assert job.precision == "fp32"
    torch.testing.assert_close(job.images, cpu_reference(spec), atol=2e-4, rtol=0)


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16")
def test_auto_on_a_native_bf16_cpu_is_the_measured_choice() -> None:
    """What auto chose is what the measurement said, and it is what the job reports."""
    spec = GenSpec("a", DIGITS, "digits", count=2, seed=1, steps=4, sampler="ddim")
    (job,), engine = _run([spec], threads=2, autocast="auto")
    why = engine._precision[job._key].why
    assert why.startswith("measured: bf16 ")
    speedup = float(why.split("bf16 ")[1].split("x")[0])
    assert job.precision == ("bf16" if speedup >= tuning.CPU_BF16_MIN_SPEEDUP else "fp32")
