"""The engine and the library on CUDA: a seed means the same image as on the CPU, bf16
autocast drifts within a bound and scores as fp32 does, and running out of GPU memory
splits or fails only what it must while the engine keeps serving."""

from __future__ import annotations

import logging

import pytest
import torch
from cuda_helpers import (
    BF16_MEAN,
    BF16_P99,
    DIGITS,
    cpu_reference,
    engine_images,
    memory_cap,
    random_checkpoint,
    requires_cuda,
    same_images,
    strict_fp32,
)

from ddpm_core.acceleration import probe_max_batch
from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.pipeline import generate
from ddpm_core.unet import UNet, preset
from worker.generate.engine import Engine, GenSpec

pytestmark = [*requires_cuda, pytest.mark.timeout(300)]


def _specs() -> list[GenSpec]:
    return [
        GenSpec("a", DIGITS, "digits", count=6, seed=0, label=3),  # defaults: 25 DDPM, w=2
        GenSpec("b", DIGITS, "digits", count=4, seed=50, steps=30, sampler="ddim", eta=1.0,
                label=8, guidance_scale=3.0),
        GenSpec("c", DIGITS, "digits", count=3, seed=90, steps=20, sampler="ddpm"),
    ]  # fmt: skip


def test_the_engine_on_cuda_in_fp32_makes_the_cpu_images() -> None:
    """Noise is drawn on the CPU for every device: in full fp32 (no TF32), the GPU's images
    are the CPU's up to the network's float rounding."""
    specs = _specs()
    refs = [cpu_reference(s) for s in specs]
    with strict_fp32():
        engine = Engine("cuda", max_batch=64, autocast="none").start()
        try:
            got = engine_images(engine, specs)
        finally:
            engine.stop()
    diff = torch.cat([(g - r).abs().flatten() for g, r in zip(got, refs, strict=True)])
    print(f"fp32 CUDA engine vs CPU: max {diff.max():.2e}, mean {diff.mean():.2e}")
    assert diff.max() <= 5e-3 and diff.mean() <= 1e-4


def test_the_engine_reports_its_cuda_memory_for_the_metrics() -> None:
    """The heartbeat's ``cuda_memory`` (ddpm_device_memory_bytes): the caching allocator's
    counters after a job, reserved at least what is allocated."""
    engine = Engine("cuda", max_batch=64).start()
    try:
        engine_images(engine, _specs()[:1])
        mem = engine.info()["cuda_memory"]
    finally:
        engine.stop()
    print(f"CUDA memory after a job: {mem}")
    assert mem["reserved"] >= mem["allocated"] > 0


def test_the_default_cuda_engine_keeps_each_seeds_image() -> None:
    """The service's CUDA defaults (bf16 autocast, channels-last, TF32): every image stays
    the CPU's image for its seed, within the bf16 drift."""
    specs = _specs()
    refs = [cpu_reference(s) for s in specs]
    engine = Engine("cuda", max_batch=64).start()
    try:
        got = engine_images(engine, specs)
    finally:
        engine.stop()
    same_images(torch.cat(got), torch.cat(refs), "default CUDA engine vs CPU fp32")


def test_bf16_drift_and_digits_score_against_fp32() -> None:
    from ddpm_core.metrics import digits_score

    ck = load_checkpoint(DIGITS, device=torch.device("cuda"))
    n = 500
    labels = [i % 10 for i in range(n)]
    with strict_fp32():
        fp32 = generate(ck, n, 0, labels=labels).cpu()
        other = generate(ck, n, n, labels=labels).cpu()  # seed noise of the score
    bf16 = generate(ck, n, 0, labels=labels, autocast_dtype=torch.bfloat16).cpu()
    diff = (bf16 - fp32).abs()
    s32, s16, s_other = (digits_score(x, labels) for x in (fp32, bf16, other))
    print(
        f"bf16 vs fp32 pixels: mean {diff.mean():.4f}, p99 {diff.flatten().quantile(0.99):.4f}, "
        f"max {diff.max():.3f}; IS fp32 {s32.inception_score:.3f} bf16 "
        f"{s16.inception_score:.3f} (other seeds {s_other.inception_score:.3f}); "
        f"accuracy fp32 {s32.label_accuracy:.3f} bf16 {s16.label_accuracy:.3f}"
    )
    assert diff.mean() <= BF16_MEAN and diff.flatten().quantile(0.99) <= BF16_P99
    assert abs(s16.inception_score - s32.inception_score) <= 0.1
    assert s16.label_accuracy >= s32.label_accuracy - 0.01
    assert s16.confidence >= s32.confidence - 0.01


def _cifar_model() -> UNet:
    torch.manual_seed(0)
    return UNet(preset("ddpm-cifar10", image_size=32, dropout=0.0)).cuda().eval()


def test_probe_max_batch_finds_what_fits_under_a_memory_cap() -> None:
    model = _cifar_model()
    shape, dev = (3, 32, 32), torch.device("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert probe_max_batch(model, shape, dev, 64, key="probe-uncapped") == 64
        with memory_cap(torch.cuda.memory_allocated() + (3 << 30)):  # 3 GiB for activations
            best = probe_max_batch(model, shape, dev, 1 << 14, key="probe-capped")
            print(f"probe under a 3 GiB cap: {best} images of 3x32x32 (bf16)")
            assert 1 <= best < 1 << 14 and best & (best - 1) == 0
            with torch.inference_mode():
                t = torch.zeros(best, dtype=torch.long, device=dev)
                model(torch.randn(best, *shape, device=dev), t)  # what it returns fits
                t = torch.zeros(4 * best, dtype=torch.long, device=dev)
                with pytest.raises(torch.OutOfMemoryError):  # half of what last fitted
                    model(torch.randn(4 * best, *shape, device=dev), t)


def _forward_memory(model: UNet) -> tuple[int, int]:
    """(fixed, per image) peak forward memory for 3x32x32 images under bf16 autocast; the
    fixed part holds the bf16 copies of the weights that autocast makes on every call."""
    peaks = []
    for n in (8, 32):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            x = torch.randn(n, 3, 32, 32, device="cuda")
            model(x, torch.zeros(n, dtype=torch.long, device="cuda"))
        peaks.append(torch.cuda.max_memory_allocated() - base)
    per_image = max(1, (peaks[1] - peaks[0]) // 24)
    return max(0, peaks[0] - 8 * per_image), per_image


def test_out_of_memory_on_cuda_splits_fails_alone_and_keeps_serving(tmp_path, caplog) -> None:
    ck_dir = str(random_checkpoint(tmp_path / "cifar", "ddpm-cifar10", 32))
    fixed, per_image = _forward_memory(_cifar_model())
    torch.cuda.empty_cache()
    # Up to the memory limit, not the throughput knee: the split is what is tested.
    engine = Engine("cuda", max_batch=64, progress_interval=0.0, knee_fraction=0.0).start()
    caplog.set_level(logging.WARNING, logger="ddpm.engine")
    big = GenSpec("big", ck_dir, "cifar", count=64, seed=100, steps=5)
    try:
        (whole,) = engine_images(engine, [big])  # loads the model; the probe says 64
        assert max(engine.batch_sizes) == 64
        # Now the GPU shrinks: about 20 images fit, so the 64-image job must be split.
        torch.cuda.empty_cache()
        with memory_cap(torch.cuda.memory_reserved() + fixed + 20 * per_image):
            singles = [GenSpec(f"one{i}", ck_dir, "cifar", count=1, seed=i, steps=5)
                       for i in range(4)]  # fmt: skip
            split, *_ = engine_images(engine, [big, *singles])
        after_cap = list(engine.batch_sizes)[-5:]
        assert "out of memory: batch split" in caplog.text
        assert max(after_cap) < 64
        # The same images: only the batch composition (and so the kernels) differ.
        print(
            f"OOM split: {fixed / 2**20:.0f} MiB + {per_image / 2**20:.1f} MiB per image, "
            f"batches after the cap {after_cap}"
        )
        same_images(split, whole, "split vs whole batch")
        # Nothing fits any more (not even the weights' bf16 copies): the job fails alone.
        torch.cuda.empty_cache()
        with memory_cap(torch.cuda.memory_reserved() + (8 << 20)):
            job = engine.submit(GenSpec("alone", ck_dir, "cifar", count=1, seed=1, steps=5))
            assert job.wait(60)
        assert job.status == "failed" and job.error is not None
        assert job.error.type in ("OutOfMemory", "OutOfMemoryError"), job.error.type
        # The GPU is back: the same engine serves again.
        again = GenSpec("again", ck_dir, "cifar", count=2, seed=3, steps=3)
        (after,) = engine_images(engine, [again])
        assert torch.isfinite(after).all()
    finally:
        engine.stop()
