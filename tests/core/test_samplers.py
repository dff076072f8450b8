import pytest
import torch

from ddpm_core.diffusion import posterior_mean, posterior_variance, predict_x0
from ddpm_core.guidance import make_denoiser
from ddpm_core.samplers import (
    SIGMA,
    SamplingCancelled,
    denoise_step,
    sample,
    stack_coefs,
    step_table,
)
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.seeding import BatchNoise
from ddpm_core.unet import UNet, preset

S = NoiseSchedule.linear(1000)


@pytest.fixture(scope="module")
def tiny_cond() -> UNet:
    torch.manual_seed(0)
    return UNet(preset("tiny", image_size=8, in_channels=1, out_channels=1, num_classes=3)).eval()


def test_table_order_and_final_step_without_noise() -> None:
    for sampler, kw in (
        ("ddpm", {"variance": "fixed_small"}),
        ("ddpm", {"variance": "fixed_large"}),
    ):
        table = step_table(S, 10, sampler, **kw)
        assert table.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
        assert table.coefs[-1, SIGMA].item() == 0.0
        assert bool((table.coefs[:-1, SIGMA] > 0).all())
    ddim = step_table(S, 10, "ddim", eta=1.0)
    assert ddim.coefs[-1, SIGMA].item() == 0.0
    assert not step_table(S, 10, "ddim", eta=0.0).has_noise(3)
    with pytest.raises(ValueError):
        step_table(S, 10, "ddim", eta=1.5)
    with pytest.raises(ValueError):
        step_table(S, 10, "euler")  # type: ignore[arg-type]


def test_ddpm_table_is_the_posterior_of_diffusion_module() -> None:
    """On the full chain, the table's update equals mu-tilde(x0_hat, x_t) + sqrt(beta-tilde) z."""
    table = step_table(S, None, "ddpm", "fixed_small", clip_denoised=False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    z = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    for k in (0, 500, 998):
        t = torch.full((4,), int(table.timesteps[k]))
        x_prev, x0 = denoise_step(x, eps, table.coefs[k].expand(4, -1), z)
        x0_ref = predict_x0(S, x, t, eps)
        ref = posterior_mean(S, x0_ref, x, t) + posterior_variance(S, t, x).sqrt() * z
        torch.testing.assert_close(x0, x0_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(x_prev, ref, rtol=1e-10, atol=1e-10)


def test_rows_from_different_tables_share_one_step() -> None:
    tables = [
        step_table(S, 10, "ddpm", "fixed_small"),
        step_table(S, 25, "ddim", eta=0.0),
        step_table(S, 50, "ddim", eta=0.5, clip_denoised=False),
        step_table(S, 7, "ddpm", "fixed_large"),
    ]
    ks = [3, 0, 49, 6]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 4, 4, generator=g) * 3
    eps = torch.randn(4, 1, 4, 4, generator=g)
    z = torch.randn(4, 1, 4, 4, generator=g)
    batched, _ = denoise_step(
        x, eps, stack_coefs([t.coefs[k] for t, k in zip(tables, ks, strict=True)]), z
    )
    for i, (t, k) in enumerate(zip(tables, ks, strict=True)):
        alone, _ = denoise_step(x[i : i + 1], eps[i : i + 1], t.coefs[k][None], z[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-6, atol=1e-6)


def _images(model: UNet, seed: int, count: int, table, labels=None, scale=1.0) -> torch.Tensor:
    noise = BatchNoise(seed, count)
    x = noise.initial((1, 8, 8))
    y = None if labels is None else torch.as_tensor(labels).expand(count)
    with torch.inference_mode():
        return sample(make_denoiser(model, y, scale), table, x, noise)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_image_i_of_a_batch_equals_the_image_alone(
    tiny_cond: UNet, sampler: str, eta: float
) -> None:
    table = step_table(S, 12, sampler, eta=eta)
    batch = _images(tiny_cond, 100, 4, table)
    for i in range(4):
        alone = _images(tiny_cond, 100 + i, 1, table)
        # Batched convolutions round differently from single-image ones (~1e-6 per call),
        # and 12 steps amplify that; a different seed differs by O(1).
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=0, atol=2e-4)
    # Same seed, same images; another seed, other images.
    torch.testing.assert_close(_images(tiny_cond, 100, 4, table), batch, rtol=0, atol=0)
    assert (_images(tiny_cond, 200, 4, table) - batch).abs().max() > 1e-2


def test_guidance_scale_one_equals_the_conditional_model(tiny_cond: UNet) -> None:
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([10, 500, 999])
    y = torch.tensor([0, 1, 2])
    with torch.inference_mode():
        cond = tiny_cond(x, t, y)
        torch.testing.assert_close(make_denoiser(tiny_cond, y, 1.0)(x, t), cond)
        # Scale 0 is the unconditional (null-class) model; scale w extrapolates linearly.
        uncond = tiny_cond(x, t, torch.full_like(y, tiny_cond.null_label))
        torch.testing.assert_close(
            make_denoiser(tiny_cond, y, 0.0)(x, t), uncond, atol=1e-5, rtol=0
        )
        guided = make_denoiser(tiny_cond, y, 3.0)(x, t)
        torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)
        per_row = make_denoiser(tiny_cond, y, torch.tensor([1.0, 0.0, 3.0]))(x, t)
        torch.testing.assert_close(per_row[2], guided[2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(per_row[0], cond[0], atol=1e-5, rtol=1e-5)
    table = step_table(S, 5, "ddim")
    a = _images(tiny_cond, 7, 2, table, labels=1, scale=1.0)
    b = _images(tiny_cond, 7, 2, table, labels=1, scale=4.0)
    assert (a - b).abs().max() > 1e-3


def test_callback_reports_progress_and_can_stop(tiny_cond: UNet) -> None:
    table = step_table(S, 6, "ddim")
    seen: list[tuple[int, int]] = []

    def record(step: int, total: int, x: torch.Tensor, x0: torch.Tensor) -> bool:
        seen.append((step, total))
        assert x.shape == x0.shape == (2, 1, 8, 8)
        return False

    _images_cb = BatchNoise(0, 2)
    with torch.inference_mode():
        sample(make_denoiser(tiny_cond), table, _images_cb.initial((1, 8, 8)), _images_cb, record)
    assert seen == [(k, 6) for k in range(1, 7)]

    def stop_at_3(step: int, total: int, x: torch.Tensor, x0: torch.Tensor) -> bool:
        return step == 3

    with pytest.raises(SamplingCancelled) as info, torch.inference_mode():
        sample(make_denoiser(tiny_cond), table, torch.randn(2, 1, 8, 8), None, stop_at_3)
    assert info.value.step == 3


def test_x0_is_clipped_only_when_asked() -> None:
    x = torch.full((1, 1, 2, 2), 5.0)
    eps = torch.zeros_like(x)
    clipped = step_table(S, 10, "ddim", clip_denoised=True)
    free = step_table(S, 10, "ddim", clip_denoised=False)
    _, x0c = denoise_step(x, eps, clipped.coefs[-1][None])
    _, x0f = denoise_step(x, eps, free.coefs[-1][None])
    assert x0c.max().item() == 1.0
    assert x0f.max().item() > 5.0
