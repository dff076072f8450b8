import pytest
import torch

from ddpm_core.diffusion import posterior_mean, posterior_variance, predict_x0
from ddpm_core.guidance import make_denoiser
from ddpm_core.samplers import (
    COEF_H1,
    COEF_H2,
    COEF_X0,
    COEF_XT,
    SIGMA,
    SamplingCancelled,
    denoise_step,
    sample,
    stack_coefs,
    stack_history,
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


@pytest.mark.parametrize(
    "sampler,eta",
    [
        ("ddpm", 0.0),
        ("ddim", 0.0),
        ("ddim", 1.0),
        ("dpm++2m", 0.0),
        ("dpm++3m", 0.0),
        ("dpm++2m-sde", 0.0),
    ],
)
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


# -- DPM-Solver++ and prediction types ---------------------------------------------------


def test_dpm_solver_tables_orders_and_history() -> None:
    """Order 1 first (no history), DDIM's eta=0 update there; the final step returns x0_hat;
    dpm++3m drops to order 2 before the last step below 15 steps (lower_order_final)."""
    for sampler, history in (("dpm++2m", 1), ("dpm++3m", 2)):
        table = step_table(S, 10, sampler)
        # A step count means diffusers' "linspace" spacing, without t = 0.
        assert table.timesteps.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
        ddim = step_table(S, table.timesteps.tolist(), "ddim", eta=0.0)
        assert table.history == history and not any(table.has_noise(k) for k in range(10))
        c = table.coefs
        torch.testing.assert_close(c[0, [COEF_XT, COEF_X0]], ddim.coefs[0, [COEF_XT, COEF_X0]])
        assert c[0, COEF_H1] == 0 and c[0, COEF_H2] == 0
        assert c[-1, COEF_XT] == 0 and c[-1, COEF_X0] == 1 and c[-1, COEF_H1] == 0
        # Consistency: the x0_hat weights of every step sum to the first-order weight.
        total = c[:, COEF_X0] + c[:, COEF_H1] + c[:, COEF_H2]
        torch.testing.assert_close(total, ddim.coefs[:, COEF_X0])
        assert bool((c[1:-1, COEF_H1] != 0).all())
    c3 = step_table(S, 10, "dpm++3m").coefs
    assert c3[1, COEF_H2] == 0 and c3[2, COEF_H2] != 0  # order 2, then 3
    assert c3[-2, COEF_H2] == 0 and c3[-3, COEF_H2] != 0  # lower order before the end
    assert step_table(S, 20, "dpm++3m").coefs[-2, COEF_H2] != 0  # 15 steps or more: order 3
    assert step_table(S, 10, "dpm++3m", lower_order_final=False).coefs[-2, COEF_H2] != 0
    one = step_table(S, 1, "dpm++2m")
    assert one.history == 0 and one.timesteps.tolist() == [999]
    assert step_table(S, 1000, "dpm++2m").timesteps.tolist() == list(range(999, -1, -1))


def _gaussian_ode_error(sampler: str, steps: int, var: float = 0.25) -> float:
    """Data ~ N(0, var): the exact denoiser is linear and the probability-flow ODE keeps
    x_t / std_t, std_t^2 = abar_t var + 1 - abar_t. The error of the solver's x at the last
    timestep, read through the final step (x0_hat of the exact denoiser, which is linear)."""
    table = step_table(S, steps, sampler, clip_denoised=False)
    x_T = torch.linspace(-3, 3, 7, dtype=torch.float64).view(7, 1, 1, 1)
    abar_all = S.alphas_cumprod

    def eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = abar_all[t].view(-1, 1, 1, 1)
        # E[eps | x_t] for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, x0 ~ N(0, var)
        return (1 - abar).sqrt() * x / (abar * var + 1 - abar)

    out = sample(eps_model, table, x_T.clone())
    a_T, a_L = (abar_all[int(table.timesteps[i])] for i in (0, -1))
    x_last = x_T * ((a_L * var + 1 - a_L) / (a_T * var + 1 - a_T)).sqrt()
    exact = x_last * a_L.sqrt() * var / (a_L * var + 1 - a_L)
    return float((out - exact).abs().max())


def test_dpm_solver_orders_of_convergence() -> None:
    """On Gaussian data (exact solution known), 4x the steps divide the error by ~4 (DDIM,
    first order), ~16 (dpm++2m) and ~64 (dpm++3m). Measured: 3.5, 9.2 and 49 on the linear
    schedule, whose log-SNR curves enough that the asymptotic rates show from ~100 steps."""
    samplers = ("ddim", "dpm++2m", "dpm++3m")
    # DDIM on the same timesteps as the solvers, for a like-for-like comparison.
    ts = {n: step_table(S, n, "dpm++2m").timesteps.tolist() for n in (100, 400)}
    errors = {s: [_gaussian_ode_error(s, ts[n]) for n in (100, 400)] for s in samplers}
    rates = {s: e[0] / e[1] for s, e in errors.items()}
    assert 3.0 < rates["ddim"] < 5.0, errors
    assert 7.0 < rates["dpm++2m"] < 20.0, errors
    assert rates["dpm++3m"] > 25.0, errors
    for n in (0, 1):
        assert errors["dpm++3m"][n] < errors["dpm++2m"][n] < errors["ddim"][n] / 4, errors


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "ddim-model", "dpm++2m", "dpm++3m"])
def test_prediction_types_agree_on_the_same_network(sampler: str) -> None:
    """eps, v = sqrt(abar) eps - sqrt(1-abar) x0 and x0 of one (x0, eps) pair give one update."""
    name, ddim_eps = ("ddim", "model") if sampler == "ddim-model" else (sampler, "x0")
    g = torch.Generator().manual_seed(5)
    tables = {
        p: step_table(
            S, 8, name, ddim_eps=ddim_eps, eta=0.5, prediction_type=p, clip_denoised=False
        )
        for p in ("epsilon", "v_prediction", "sample")
    }
    histories = {p: [] for p in tables}
    for k in range(8):
        t = int(tables["epsilon"].timesteps[k])
        a, s = S.alphas_cumprod[t].sqrt(), (1 - S.alphas_cumprod[t]).sqrt()
        x0 = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
        eps = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
        z = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
        x = a * x0 + s * eps
        outs = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}
        results = {}
        for p, table in tables.items():
            coefs = table.coefs[k].expand(3, -1)
            results[p] = denoise_step(x, outs[p], coefs, z, histories[p])
            histories[p] = [results[p][1], *histories[p]][: table.history]
        for p in ("v_prediction", "sample"):
            torch.testing.assert_close(results[p][1], x0, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(results[p][0], results["epsilon"][0], rtol=1e-9, atol=1e-9)


def test_multistep_rows_keep_their_own_history_in_a_shared_step() -> None:
    """Rows at different steps of different tables (some with a history, some without) in one
    call equal each row stepped alone."""
    tables = [
        step_table(S, 10, "dpm++2m"),
        step_table(S, 25, "ddim"),
        step_table(S, 13, "dpm++3m"),
        step_table(S, 7, "ddpm"),
        step_table(S, 13, "dpm++3m"),
    ]
    ks = [4, 3, 6, 2, 0]
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 1, 4, 4, generator=g)
    out = torch.randn(5, 1, 4, 4, generator=g)
    z = torch.randn(5, 1, 4, 4, generator=g)
    hist = [
        [torch.rand(1, 4, 4, generator=g) for _ in range(min(table.history, k))]
        for table, k in zip(tables, ks, strict=True)
    ]
    coefs = stack_coefs([t.coefs[k] for t, k in zip(tables, ks, strict=True)])
    batched, _ = denoise_step(x, out, coefs, z, stack_history(hist, x[0]))
    for i, (t, k) in enumerate(zip(tables, ks, strict=True)):
        h = [past[None] for past in hist[i]]
        alone, _ = denoise_step(x[i : i + 1], out[i : i + 1], t.coefs[k][None], z[i : i + 1], h)
        torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-6, atol=1e-6)
    # The history matters: without it the multistep rows move elsewhere.
    plain, _ = denoise_step(x, out, coefs, z)
    assert (plain[0] - batched[0]).abs().max() > 1e-3 and (plain[2] - batched[2]).abs().max() > 1e-3
    torch.testing.assert_close(plain[[1, 3, 4]], batched[[1, 3, 4]])
