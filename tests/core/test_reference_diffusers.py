"""ddpm_core against diffusers, an independent implementation (test-only dependency)."""

import numpy as np
import pytest
import torch

from ddpm_core.convert import convert_state_dict, from_diffusers, load_diffusers_dir
from ddpm_core.samplers import denoise_step, sample, step_table
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.seeding import BatchNoise

diffusers = pytest.importorskip("diffusers")

S = NoiseSchedule.linear(1000)
SHAPE = (2, 3, 8, 8)
CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=[128, 256, 256, 256],
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    layers_per_block=2,
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=32,
)


def _noisy_input(t: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t drawn from q(x_t | x_0) for x_0 in [-1.2, 1.2] (partly outside the clip range), and an
    imperfect model's eps (the true noise plus 30% error), as the sampler meets them."""
    x0 = torch.rand(SHAPE, generator=g) * 2.4 - 1.2
    eps_true = torch.randn(SHAPE, generator=g)
    abar = S.alphas_cumprod[t].float()
    x = abar.sqrt() * x0 + (1 - abar).sqrt() * eps_true
    return x, eps_true + 0.3 * torch.randn(SHAPE, generator=g)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("steps", [None, 50, [999, 700, 420, 100, 20, 0]])
def test_ddpm_step_equals_diffusers(variance: str, clip: bool, steps) -> None:
    """Every step of the chain. Where the two differ by more than 1e-5 (t <= 4, where
    diffusers computes beta-tilde in float32 with cancellation), ours must be the one
    within 1e-6 of the same step computed in float64."""
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", variance_type=variance, clip_sample=clip
    )
    table = step_table(S, steps, "ddpm", variance, clip_denoised=clip)
    ref.set_timesteps(timesteps=table.timesteps.tolist())
    assert ref.timesteps.tolist() == table.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    for k in range(len(table)):
        t = int(table.timesteps[k])
        x, eps = _noisy_input(t, g)
        out = ref.step(eps, t, x, generator=torch.Generator().manual_seed(k))
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(k))
        coefs = table.coefs[k].expand(2, -1)
        ours, x0 = denoise_step(x, eps, coefs, z)
        exact_prev, _ = denoise_step(x.double(), eps.double(), coefs, z.double())
        # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) multiplies float32 rounding of x_t by
        # up to 1/sqrt(abar) ~ 160 (t near T, unclipped): the tolerance follows that factor.
        amplification = float(S.alphas_cumprod[t] ** -0.5)
        torch.testing.assert_close(
            x0, out.pred_original_sample, rtol=1e-5, atol=1e-5 + 1e-6 * amplification
        )
        _same_or_more_exact(ours, out.prev_sample, exact_prev, k, t)


def _same_or_more_exact(ours, ref, exact, k: int, t: int, tol: float = 1e-5) -> None:
    """|ours - diffusers| <= tol (relative above 1), or else ours is the float64-exact one.

    diffusers keeps abar in float32 and forms 1 - abar and beta-tilde from it, which
    cancels at small t; where that moves its result past ``tol``, ours must lie within
    1e-6 (relative above 1) of the float64 computation, and diffusers must not.
    """
    scale = ref.abs().clamp(min=1.0)
    diff = ((ours - ref).abs() / scale).max().item()
    if diff <= tol:
        return
    ours_err = ((ours.double() - exact).abs() / scale).max().item()
    ref_err = ((ref.double() - exact).abs() / scale).max().item()
    assert ours_err <= 1e-6 < ref_err, (k, t, diff, ours_err, ref_err)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("ddim_eps", ["x0", "model"])
def test_ddim_step_equals_diffusers(eta: float, clip: bool, num_steps: int, ddim_eps: str) -> None:
    """ddim_eps="x0" is diffusers' use_clipped_model_output=True, "model" its default."""
    ref = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=clip,
        set_alpha_to_one=True,
        timestep_spacing="leading",
    )
    ref.set_timesteps(num_steps)
    leading = ref.timesteps.tolist()  # e.g. [900, 800, ..., 0]: prev = t - T/S
    table = step_table(S, leading, "ddim", eta=eta, clip_denoised=clip, ddim_eps=ddim_eps)
    assert table.timesteps.tolist() == leading
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for k in range(len(table)):
        x, eps = _noisy_input(leading[k], g)
        z = torch.randn(SHAPE, generator=g)
        out = ref.step(
            eps,
            leading[k],
            x,
            eta=eta,
            variance_noise=z,
            use_clipped_model_output=ddim_eps == "x0",
        )
        ours, _ = denoise_step(x, eps, table.coefs[k].expand(2, -1), z)
        worst = max(worst, (ours - out.prev_sample).abs().max().item())
    assert worst <= 1e-5


def _diffusers_cifar10(up_block_types=None) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = dict(CIFAR10, up_block_types=up_block_types or CIFAR10["up_block_types"])
    model = diffusers.UNet2DModel(**cfg).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (no zero-initialised layers)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="module")
def cifar10_pair():
    ref = _diffusers_cifar10()
    return ref, from_diffusers(ref)


def test_converted_cifar10_unet_matches_diffusers(cifar10_pair) -> None:
    ref, ours = cifar10_pair
    assert sum(p.numel() for p in ours.parameters()) == 35_746_307
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        expected = ref(x, t).sample
        got = ours(x, t)
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1  # the comparison is not between two near-zero maps


def test_conversion_accepts_old_attention_names_and_saved_dirs(cifar10_pair, tmp_path) -> None:
    ref, ours = cifar10_pair
    old = {}
    for k, v in ref.state_dict().items():
        for new, legacy in (("to_q", "query"), ("to_k", "key"), ("to_v", "value")):
            k = k.replace(f".{new}.", f".{legacy}.")
        old[k.replace(".to_out.0.", ".proj_attn.")] = v
    assert any(".proj_attn." in k for k in old)
    converted = convert_state_dict(old, ours.config)
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(converted[k], v, rtol=0, atol=0)

    ref.save_pretrained(tmp_path / "st")  # safetensors
    ref.save_pretrained(tmp_path / "bin", safe_serialization=False)  # legacy .bin
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([321])
    with torch.no_grad():
        expected = ref(x, t).sample
        for sub in ("st", "bin"):
            _, loaded = load_diffusers_dir(tmp_path / sub)
            assert (loaded(x, t) - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["tiny", "small", "ddpm-cifar10"])
def test_presets_round_trip_through_diffusers_configs(name: str) -> None:
    from ddpm_core.convert import diffusers_config
    from ddpm_core.unet import preset

    num_classes = 10 if name == "tiny" else None
    cfg = preset(name, num_classes=num_classes)
    ref = diffusers.UNet2DModel(**diffusers_config(cfg))
    ours = from_diffusers(ref)
    assert ours.config == cfg
    # Same parameters, but for the one extra class-table row: our null class.
    extra = 4 * cfg.base_channels if num_classes else 0
    n_ref = sum(p.numel() for p in ref.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_ref + extra


def test_mirrored_and_unmirrored_attention_layouts_convert() -> None:
    ref = _diffusers_cifar10(["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
    ours = from_diffusers(ref)
    assert ours.config.up_attention_resolutions == (8,)
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([5])
    with torch.no_grad():
        assert (ours(x, t) - ref(x, t).sample).abs().max().item() <= 1e-4


def test_ddim_sampling_loop_equals_ddim_pipeline() -> None:
    """Whole loop: same weights, same seed, same timesteps -> the same image as DDIMPipeline."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=[32, 64],
        down_block_types=["DownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "UpBlock2D"],
        layers_per_block=1,
        norm_num_groups=8,
    ).eval()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        batch_size=1,
        generator=torch.Generator().manual_seed(123),
        num_inference_steps=20,
        eta=0.0,
        use_clipped_model_output=True,  # eps re-derived from the clipped x0: our default
        output_type="np",
    ).images[0]

    ours = from_diffusers(unet)
    assert len(pipe.scheduler.timesteps) == 20  # the pipeline's own scheduler copy
    table = step_table(S, pipe.scheduler.timesteps.tolist(), "ddim", eta=0.0)
    noise = BatchNoise(123, 1)
    with torch.inference_mode():
        x = sample(lambda x, t: ours(x, t), table, noise.initial((1, 16, 16)), noise)
    ours_np = ((x[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1)).numpy()
    # 20 steps of float32 rounding in two implementations; one uint8 level is 3.9e-3.
    assert np.abs(ours_np - out).max() <= 5e-4
