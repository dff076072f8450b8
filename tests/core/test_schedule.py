import math

import pytest
import torch

from ddpm_core.schedule import NoiseSchedule, default_timesteps


def test_linear_schedule_matches_ddpm_paper() -> None:
    s = NoiseSchedule.linear(1000)
    assert s.betas.dtype == torch.float64
    assert len(s) == 1000
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    # abar_T = prod(1 - beta_t) ~ 4.04e-5: x_T is almost pure noise.
    abar_T = math.prod(1 - b for b in s.betas.tolist())
    assert s.alphas_cumprod[-1].item() == pytest.approx(abar_T, rel=1e-12)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)


def test_cosine_schedule_follows_closed_form() -> None:
    T, s_ = 1000, 0.008
    s = NoiseSchedule.cosine(T, s_)

    def f(t: float) -> float:
        return math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        # abar at index t is the product up to step t+1 of the continuous schedule.
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max().item() <= 0.999


def test_posterior_variance_closed_form() -> None:
    s = NoiseSchedule.linear(1000)
    t = 500
    abar, abar_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
    expected = (1 - abar_prev) / (1 - abar) * s.betas[t]
    assert s.posterior_variance[t].item() == pytest.approx(expected.item(), rel=1e-12)
    assert s.posterior_variance[0].item() == 0.0


def test_default_timesteps_are_rounded_linspace() -> None:
    assert default_timesteps(1000, 5) == [0, 250, 500, 749, 999]
    assert default_timesteps(1000, 1000) == list(range(1000))
    assert default_timesteps(10, 4) == [0, 3, 6, 9]
    with pytest.raises(ValueError):
        default_timesteps(1000, 0)
    with pytest.raises(ValueError):
        default_timesteps(1000, 1001)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 10, 50, 999])
def test_respaced_betas_reproduce_retained_alphas_cumprod(kind: str, steps: int) -> None:
    full = NoiseSchedule.linear(1000) if kind == "linear" else NoiseSchedule.cosine(1000)
    spaced = full.respace(steps)
    assert len(spaced) == steps
    assert spaced.num_train_timesteps == 1000
    kept = spaced.timesteps
    torch.testing.assert_close(
        spaced.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-9, atol=1e-15
    )


def test_respace_with_explicit_list_in_any_order() -> None:
    full = NoiseSchedule.linear(1000)
    spaced = full.respace([999, 500, 0, 250])
    assert spaced.timesteps.tolist() == [0, 250, 500, 999]
    torch.testing.assert_close(
        spaced.alphas_cumprod, full.alphas_cumprod[[0, 250, 500, 999]], rtol=1e-12, atol=0
    )
    for bad in ([], [1000], [-1], [5, 5]):
        with pytest.raises(ValueError):
            full.respace(bad)


def test_config_round_trip() -> None:
    for s in (NoiseSchedule.linear(200, 2e-4, 0.03), NoiseSchedule.cosine(300, 0.01)):
        again = NoiseSchedule.from_config(s.to_config())
        torch.testing.assert_close(again.betas, s.betas, rtol=0, atol=0)
    with pytest.raises(ValueError, match="schedule.kind must be one of"):
        NoiseSchedule.from_config({"kind": "sigmoid"})
