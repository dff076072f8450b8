import pytest
import torch

from ddpm_core.diffusion import (
    diffusion_loss,
    posterior_mean,
    posterior_mean_from_eps,
    posterior_variance,
    predict_eps,
    predict_x0,
    q_sample,
    training_target,
    velocity,
)
from ddpm_core.schedule import NoiseSchedule

S = NoiseSchedule.linear(1000)


def test_q_sample_moments() -> None:
    """x_t | x_0 ~ N(sqrt(abar_t) x_0, (1 - abar_t) I): check empirical mean and variance."""
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    for t in (0, 100, 999):
        tt = torch.full((n,), t)
        xt = q_sample(S, x0, tt, torch.randn(n, 1, generator=g, dtype=torch.float64))
        abar = S.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(abar**0.5 * 0.7, abs=5e-3)
        assert xt.var().item() == pytest.approx(1 - abar, rel=2e-2, abs=1e-4)


def test_predict_x0_inverts_q_sample() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 100, 500, 800, 998, 999])
    xt = q_sample(S, x0, t, eps)
    torch.testing.assert_close(predict_x0(S, xt, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(predict_eps(S, xt, t, x0), eps, rtol=1e-9, atol=1e-9)


def test_two_forms_of_the_posterior_mean_agree() -> None:
    """DDPM Eq. 7 with x0 = predict_x0(eps) equals the eps form of Eq. 11."""
    g = torch.Generator().manual_seed(2)
    xt = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 5, 50, 300, 700, 999])
    mean_x0 = posterior_mean(S, predict_x0(S, xt, t, eps), xt, t)
    mean_eps = posterior_mean_from_eps(S, xt, t, eps)
    torch.testing.assert_close(mean_x0, mean_eps, rtol=1e-10, atol=1e-10)


def test_posterior_is_the_bayes_posterior() -> None:
    """Check Eq. 6-7 against the Gaussian product rule on scalars."""
    t = 400
    beta, abar_prev = S.betas[t].item(), S.alphas_cumprod[t - 1].item()
    x0, xt = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.8]], dtype=torch.float64)
    # prior x_{t-1} ~ N(sqrt(abar_prev) x0, 1 - abar_prev);
    # likelihood x_t ~ N(sqrt(1 - beta) x_{t-1}, beta)
    prec = 1 / (1 - abar_prev) + (1 - beta) / beta
    mean = (abar_prev**0.5 * 0.3 / (1 - abar_prev) + (1 - beta) ** 0.5 * -0.8 / beta) / prec
    tt = torch.tensor([t])
    assert posterior_mean(S, x0, xt, tt).item() == pytest.approx(mean, rel=1e-10)
    assert posterior_variance(S, tt, x0).item() == pytest.approx(1 / prec, rel=1e-10)


def test_loss_kinds() -> None:
    a, b = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2) * 2
    assert diffusion_loss(a, b).item() == pytest.approx(4.0)
    assert diffusion_loss(a, b, "l1").item() == pytest.approx(2.0)
    assert diffusion_loss(a, b, reduction="none").shape == (2,)
    with pytest.raises(ValueError):
        diffusion_loss(a, b, "huber")  # type: ignore[arg-type]


def test_training_targets_and_the_v_identities() -> None:
    """v = a eps - s x0 (Salimans & Ho 2022): x0 = a x_t - s v and eps = s x_t + a v, the
    inversions the samplers' v_prediction columns use; the target follows the type."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = q_sample(S, x0, t, noise)
    a = S.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - S.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    v = velocity(S, x0, t, noise)
    torch.testing.assert_close(a * x_t - s * v, x0)
    torch.testing.assert_close(s * x_t + a * v, noise)
    assert training_target("epsilon", S, x0, t, noise) is noise
    assert training_target("sample", S, x0, t, noise) is x0
    torch.testing.assert_close(training_target("v_prediction", S, x0, t, noise), v)
    with pytest.raises(ValueError, match="prediction type"):
        training_target("flow", S, x0, t, noise)
