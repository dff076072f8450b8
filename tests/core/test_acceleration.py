import pytest
import torch

from ddpm_core.acceleration import FastDenoiser, FastOptions, bucket_for, probe_max_batch
from ddpm_core.unet import UNet, preset


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    cfg = preset("tiny", image_size=8, in_channels=1, out_channels=1, num_classes=3)
    return UNet(cfg).eval()


def test_bucket_for() -> None:
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return (
        torch.randn(n, 1, 8, 8, generator=g),
        torch.randint(0, 1000, (n,), generator=g),
        torch.randint(0, 4, (n,), generator=g),
    )


@pytest.mark.parametrize("opts", [FastOptions(pad_to_bucket=True), FastOptions(channels_last=True)])
def test_padding_and_channels_last_match_eager(model: UNet, opts: FastOptions) -> None:
    fast = FastDenoiser(UNet(model.config).eval(), opts)
    fast.model.load_state_dict(model.state_dict())
    for n in (1, 3, 5):
        x, t, y = _inputs(n)
        with torch.inference_mode():
            expected = model(x, t, y)
            got = fast(x, t, y)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert fast.null_label == model.null_label


def test_compiled_model_matches_eager_without_recompiling(model: UNet) -> None:
    """torch.compile (inductor, C++ on CPU) against eager; batch sizes 3 and 4 share a graph."""
    torch._dynamo.reset()
    fast = FastDenoiser(model, FastOptions(compile=True, buckets=(4, 8)))
    with torch.inference_mode():
        for n in (3, 4, 2):
            x, t, y = _inputs(n)
            torch.testing.assert_close(fast(x, t, y), model(x, t, y), rtol=1e-4, atol=1e-4)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames == 1, f"expected one compiled graph for bucket 4, got {frames}"


def test_probe_max_batch_on_cpu_is_the_limit(model: UNet) -> None:
    assert probe_max_batch(model, (1, 8, 8), torch.device("cpu"), limit=48) == 48
