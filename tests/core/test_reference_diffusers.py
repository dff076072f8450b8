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


def _same_or_more_exact(
    ours, ref, exact, k: int, t: int, tol: float = 1e-5, exact_tol: float = 1e-6
) -> None:
    """|ours - diffusers| <= tol (relative above 1), or else ours is the float64-exact one.

    diffusers keeps abar in float32 and forms 1 - abar and beta-tilde from it, which
    cancels at small t; where that moves its result past ``tol``, ours must lie within
    ``exact_tol`` (relative above 1) of the float64 computation, and diffusers must not.
    """
    scale = ref.abs().clamp(min=1.0)
    diff = ((ours - ref).abs() / scale).max().item()
    if diff <= tol:
        return
    ours_err = ((ours.double() - exact).abs() / scale).max().item()
    ref_err = ((ref.double() - exact).abs() / scale).max().item()
    assert ours_err <= exact_tol < ref_err, (k, t, diff, ours_err, ref_err)


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


def _schedule_of(ref) -> NoiseSchedule:
    """Our schedule with diffusers' own (float32) abar: the two then differ only in how
    they compute a step, not in the table they start from."""
    abar = ref.alphas_cumprod.double()
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return NoiseSchedule(1 - abar / prev, torch.arange(len(abar)), len(abar))


def _dpm_reference(order: int, kind: str, clip: bool, prediction: str, sde: bool = False):
    # Dynamic thresholding with sample_max_value=1 is clipping to [-1, 1]: the quantile
    # s is clamped to [1, 1], then x0 = clamp(x0, -s, s) / s.
    return diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear" if kind == "linear" else "squaredcos_cap_v2",
        solver_order=order,
        algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        thresholding=clip,
        sample_max_value=1.0,
        prediction_type=prediction,
    )


def _dpm_chain(ref, table, schedule, seed: int):
    """Both solvers along the whole chain, fed the same fresh (x_t, network output) at every
    step; each keeps its own history. Yields (k, t, ours, diffusers', ours in float64)."""
    g = torch.Generator().manual_seed(seed)
    hist: list[torch.Tensor] = []
    hist64: list[torch.Tensor] = []
    for k in range(len(table)):
        t = int(table.timesteps[k])
        x0 = torch.rand(SHAPE, generator=g) * 2.4 - 1.2
        abar = schedule.alphas_cumprod[t].float()
        x = abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(SHAPE, generator=g)
        out = torch.randn(SHAPE, generator=g)
        z = torch.randn(SHAPE, generator=g)  # used by the stochastic variant only
        expected = ref.step(out, t, x, variance_noise=z).prev_sample
        coefs = table.coefs[k].expand(SHAPE[0], -1)
        z = z if table.has_noise(k) else None
        ours, x0_hat = denoise_step(x, out, coefs, z, hist)
        exact, x0_exact = denoise_step(
            x.double(), out.double(), coefs, None if z is None else z.double(), hist64
        )
        hist = [x0_hat, *hist][: table.history]
        hist64 = [x0_exact, *hist64][: table.history]
        yield k, t, ours, expected, exact


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [10, 25, 1000])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_step_equals_diffusers(
    order: int, clip: bool, steps: int, kind: str, prediction: str
) -> None:
    """DPM-Solver++(2M/3M) against DPMSolverMultistepScheduler (dpmsolver++, midpoint,
    lower_order_final): the same timesteps for the same step count, and every step of the
    chain within 1e-5 once both start from the same abar and diffusers' sigmas are float64
    (its float32 ones are the next test's subject). Unclipped x0 = (x_t - s eps) / a at
    t = 999 of the cosine schedule multiplies float32 rounding by 1/a ~ 2e4: the tolerance
    follows that factor, as in the DDPM test."""
    ref = _dpm_reference(order, kind, clip, prediction)
    schedule = _schedule_of(ref)
    table = step_table(
        schedule, steps, f"dpm++{order}m", clip_denoised=clip, prediction_type=prediction
    )
    if steps < 1000:
        ref.set_timesteps(steps)  # diffusers' own spacing: ours must be the same
    else:  # its linspace would repeat timesteps at S = T
        ref.set_timesteps(timesteps=table.timesteps.tolist())
    assert ref.timesteps.tolist() == table.timesteps.tolist()
    ref.sigmas = ref.sigmas.double()
    for k, t, ours, expected, _ in _dpm_chain(ref, table, schedule, seed=order):
        amplification = float(schedule.alphas_cumprod[t] ** -0.5)
        scale = expected.abs().clamp(min=1.0)
        diff = ((ours - expected).abs() / scale).max().item()
        assert diff <= 1e-5 + 1e-6 * amplification, (k, t, diff)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [10, 25, 1000])
@pytest.mark.parametrize("clip", [True, False])
def test_dpm_solver_sde_step_equals_diffusers(clip: bool, steps: int, kind: str, prediction: str):
    """dpm++2m-sde against sde-dpmsolver++ (order 2, midpoint), the same z at every step;
    as the deterministic test: same abar, float64 sigmas, 1e-5 but where 1/a amplifies."""
    ref = _dpm_reference(2, kind, clip, prediction, sde=True)
    schedule = _schedule_of(ref)
    table = step_table(
        schedule, steps, "dpm++2m-sde", clip_denoised=clip, prediction_type=prediction
    )
    assert table.has_noise(0) and not table.has_noise(len(table) - 1)
    if steps < 1000:
        ref.set_timesteps(steps)
    else:
        ref.set_timesteps(timesteps=table.timesteps.tolist())
    assert ref.timesteps.tolist() == table.timesteps.tolist()
    ref.sigmas = ref.sigmas.double()
    for k, t, ours, expected, _ in _dpm_chain(ref, table, schedule, seed=7):
        amplification = float(schedule.alphas_cumprod[t] ** -0.5)
        scale = expected.abs().clamp(min=1.0)
        diff = ((ours - expected).abs() / scale).max().item()
        assert diff <= 1e-5 + 1e-6 * amplification, (k, t, diff)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [25, 1000])
@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_against_diffusers_float32_tables(order: int, steps: int, kind: str) -> None:
    """Plain diffusers keeps abar and sigma in float32: 1 - abar cancels at small t and its
    third-order weight (e^-h - 1 + h)/h^2 - 1/2 cancels for small steps h. Where that moves
    it by more than 1e-5, ours is the one within 1e-5 of the float64 computation."""
    ref = _dpm_reference(order, kind, True, "epsilon")
    schedule = NoiseSchedule.linear(1000) if kind == "linear" else NoiseSchedule.cosine(1000)
    table = step_table(schedule, steps, f"dpm++{order}m")
    ref.set_timesteps(timesteps=table.timesteps.tolist())
    for k, t, ours, expected, exact in _dpm_chain(ref, table, schedule, seed=10 + order):
        _same_or_more_exact(ours, expected, exact, k, t, exact_tol=1e-5)


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


TINY_UNET = dict(
    sample_size=16,
    in_channels=1,
    out_channels=1,
    block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    layers_per_block=1,
    norm_num_groups=8,
)


@pytest.fixture(scope="module")
def v_pipeline_dir(tmp_path_factory):
    """A saved diffusers pipeline: a small random UNet2DModel trained (by nobody) for
    v-prediction, with a DDPMScheduler config that says so."""
    torch.manual_seed(3)
    unet = diffusers.UNet2DModel(**TINY_UNET).eval()
    with torch.no_grad():  # non-trivial weights everywhere (no zero-initialised layers)
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        variance_type="fixed_small",
        clip_sample=True,
    )
    root = tmp_path_factory.mktemp("vpipe")
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(root)
    return root


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "dpm++3m"])
def test_converted_v_prediction_pipeline_samples_like_diffusers(v_pipeline_dir, sampler, tmp_path):
    """`ddpm convert` of a v-prediction pipeline, sampled by our loop with the pipeline's
    timesteps and seed, gives diffusers' image: DDPMPipeline (ancestral, with its per-step
    noise), DDIMPipeline, and DDPMPipeline driving DPMSolverMultistepScheduler."""
    from app.cli import main as ddpm
    from ddpm_core.checkpoint import load_checkpoint
    from ddpm_core.pipeline import generate

    assert ddpm(["convert", str(v_pipeline_dir), str(tmp_path / "ck")]) == 0
    ckpt = load_checkpoint(tmp_path / "ck")
    assert ckpt.config.prediction_type == "v_prediction"
    assert ckpt.config.schedule["kind"] == "cosine"

    pipe = diffusers.DDPMPipeline.from_pretrained(v_pipeline_dir)
    config = pipe.scheduler.config
    kwargs = {}
    if sampler == "ddim":
        sched = diffusers.DDIMScheduler.from_config(config, set_alpha_to_one=True)
        pipe = diffusers.DDIMPipeline(unet=pipe.unet, scheduler=sched)
        kwargs = {"eta": 0.0, "use_clipped_model_output": True}
    elif sampler.startswith("dpm"):
        sched = diffusers.DPMSolverMultistepScheduler.from_config(
            config,
            algorithm_type="dpmsolver++",
            solver_order=int(sampler[5]),
            thresholding=True,  # with sample_max_value=1: clipping, as clip_sample says
            sample_max_value=1.0,
            timestep_spacing="linspace",  # its default (DDPMScheduler's config says leading)
        )
        pipe = diffusers.DDPMPipeline(unet=pipe.unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    steps = 12
    expected = pipe(
        batch_size=1,
        generator=torch.Generator().manual_seed(42),
        num_inference_steps=steps,
        output_type="np",
        **kwargs,
    ).images[0]
    timesteps = pipe.scheduler.timesteps.tolist()
    if sampler.startswith("dpm"):
        # A step count means the same timesteps in both.
        assert timesteps == generate_timesteps(ckpt, steps, sampler)
    with torch.inference_mode():
        ours = generate(ckpt, 1, seed=42, steps=timesteps, sampler=sampler)
    ours_np = (ours[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1).numpy()
    # One uint8 level is 3.9e-3; measured: 2.9e-6 (ddpm), 3.6e-7 (ddim, dpm++2m, dpm++3m).
    assert np.abs(ours_np - expected).max() <= 1e-4
    assert expected.std() > 0.05  # an image, not a constant


def generate_timesteps(ckpt, steps: int, sampler: str) -> list[int]:
    from ddpm_core.pipeline import step_table_for

    return step_table_for(ckpt, steps, sampler).timesteps.tolist()
