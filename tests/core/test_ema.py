import pytest
import torch
from torch import nn

from ddpm_core.ema import EMA, ema_decay


def _model(value: float) -> nn.Module:
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.fill_(value)
        m.bias.fill_(value)
    return m


def test_decay_warmup_formula() -> None:
    # decay_t = min(decay, (1 + t) / (10 + t))
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.999, 10**6) == 0.999
    assert ema_decay(0.9, 5, warmup=False) == 0.9


def test_update_is_the_exponential_average() -> None:
    model = _model(1.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    d = ema.update(model)
    assert d == 0.9
    # s = d * s + (1 - d) * p = 0.9 * 1 + 0.1 * 3
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 3), 1.2))
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 3), 0.9 * 1.2))
    assert ema.num_updates == 2


def test_warmup_makes_first_updates_follow_the_weights() -> None:
    model = _model(0.0)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(10.0)
    ema.update(model)  # decay 0.1 at t=0
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 3), 9.0))


def test_copy_to_and_state_round_trip() -> None:
    model = _model(1.0)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    other = _model(-5.0)
    ema.copy_to(other)
    assert torch.allclose(other.weight, torch.full((2, 3), 2.0))

    fresh = EMA(_model(0.0), decay=0.5, warmup=False)
    fresh.load_state_dict(ema.state_dict(), ema.extra_state())
    assert fresh.num_updates == 1
    assert torch.equal(fresh.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(KeyError):
        fresh.load_state_dict({"weight": torch.zeros(2, 3)})


def test_invalid_decay_rejected() -> None:
    with pytest.raises(ValueError):
        EMA(_model(0.0), decay=1.0)
