"""torch.compile on CUDA: compiled (inductor) and CUDA-graph (reduce-overhead) calls equal
eager ones, batch sizes of one bucket share one graph, and the engine's compiled path
keeps every seed's image."""

from __future__ import annotations

import pytest
import torch
from cuda_helpers import (
    DIGITS,
    cpu_reference,
    requires_cuda,
    same_images,
    strict_fp32,
)

from ddpm_core.acceleration import FastDenoiser, FastOptions
from ddpm_core.checkpoint import load_checkpoint
from worker.generate.engine import Engine, GenSpec

pytestmark = [*requires_cuda, pytest.mark.timeout(400)]


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 1, 16, 16, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, 11, (n,), generator=g)
    return x.cuda(), t.cuda(), y.cuda()


def _reset() -> None:
    """Forget compiled graphs and the counters (which torch._dynamo.reset() keeps)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def _counters() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_equals_eager_and_one_bucket_is_one_graph(mode: str | None) -> None:
    model = load_checkpoint(DIGITS, device=torch.device("cuda")).model
    _reset()
    fast = FastDenoiser(model, FastOptions(compile=True, compile_mode=mode, buckets=(4, 8)))
    with strict_fp32(), torch.inference_mode():
        kept = []
        for n in (3, 4, 2, 1):  # all padded to bucket 4
            x, t, y = _inputs(n)
            expected, got = model(x, t, y), fast(x, t, y)
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
            kept.append((got, expected))
        # CUDA graphs replay into the same output buffers: what was returned must survive.
        for got, expected in kept:
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    graphs, skips = _counters()
    print(f"mode={mode}: {graphs} graph(s) for batch sizes 3, 4, 2, 1; cudagraph skips {skips}")
    assert graphs == 1, f"expected one graph for bucket 4, got {graphs}"
    assert skips == 0, "CUDA graphs were skipped"


def test_engine_with_cuda_graphs_keeps_each_seeds_image() -> None:
    """The service with DDPM_COMPILE=1 DDPM_COMPILE_MODE=reduce-overhead: batches of 6, 3
    and 1 rows (jobs of different lengths) all run the bucket-8 graph."""
    _reset()
    fast = FastOptions(channels_last=True, compile=True, compile_mode="reduce-overhead",
                       buckets=(8,))  # fmt: skip
    specs = [
        GenSpec("a", DIGITS, "digits", count=3, seed=0, steps=10, label=1, guidance_scale=1.0),
        GenSpec("b", DIGITS, "digits", count=2, seed=10, steps=15, label=2, guidance_scale=1.0),
        GenSpec("c", DIGITS, "digits", count=1, seed=20, steps=20, label=3, guidance_scale=1.0),
    ]
    engine = Engine("cuda", max_batch=8, fast=fast, knee_fraction=0.0)  # batches as submitted
    jobs = [engine.submit(s) for s in specs]  # before the start: the first batch holds 6
    engine.start()
    try:
        for j in jobs:
            assert j.wait(300) and j.status == "succeeded", j.error
    finally:
        engine.stop()
    sizes = sorted(set(engine.batch_sizes))
    graphs, skips = _counters()
    refs = torch.cat([cpu_reference(s) for s in specs])
    print(f"engine with CUDA graphs: batch sizes {sizes}, {graphs} graph(s), skips {skips}")
    same_images(torch.cat([j.images for j in jobs]), refs, "CUDA-graph engine vs CPU fp32")
    assert sizes == [1, 3, 6]
    assert graphs == 1 and skips == 0
