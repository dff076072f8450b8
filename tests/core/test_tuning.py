"""ddpm_core.tuning: the throughput knee and the precision choice, on a fake clock (the
rules) and on a real network (that the measurement runs and says what it measured)."""

from __future__ import annotations

import pytest
import torch

import ddpm_core.tuning as tuning
from ddpm_core.tuning import choose_precision, model_precision, throughput_knee
from ddpm_core.unet import UNet, preset

CPU = torch.device("cpu")


class FakeClock:
    """perf_counter advanced by the fake forwards: the rules, without timing noise."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple] = []

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(tuning.time, "perf_counter", c)
    return c


def curve(clock: FakeClock, rates: dict[int, float], oom_from: int | None = None):
    """A forward whose batch b runs at rates[b] rows/s."""

    def forward(b: int) -> None:
        clock.calls.append(b)
        if oom_from is not None and b >= oom_from:
            raise torch.OutOfMemoryError(f"{b} rows")
        clock.now += b / rates[b]

    return forward


RATES = {1: 10.0, 2: 18.0, 4: 30.0, 8: 38.0, 16: 40.0, 32: 40.5, 64: 40.6, 128: 41.0, 256: 41}


def test_knee_is_the_smallest_batch_near_the_best_rate(clock: FakeClock) -> None:
    knee, rates = throughput_knee(curve(clock, RATES), CPU, 256, fraction=0.9)
    assert knee == 8  # 38 >= 0.9 * 40.6; 4 (30) is not
    # Two doublings without 5% gain (32, 64) end the measurement: 128 and 256 never run.
    assert sorted(rates) == [1, 2, 4, 8, 16, 32, 64]
    assert rates[16] == pytest.approx(40.0)
    assert max(clock.calls) == 64


def test_knee_fraction_one_takes_the_fastest_and_zero_takes_the_limit(clock: FakeClock) -> None:
    assert throughput_knee(curve(clock, RATES), CPU, 256, fraction=1.0)[0] == 64
    clock.calls.clear()
    assert throughput_knee(curve(clock, RATES), CPU, 48, fraction=0.0) == (48, {})
    assert clock.calls == []  # nothing measured


def test_knee_stops_at_the_limit_and_at_out_of_memory(clock: FakeClock) -> None:
    knee, rates = throughput_knee(curve(clock, RATES), CPU, 4, fraction=0.9)
    assert (knee, sorted(rates)) == (4, [1, 2, 4])
    knee, rates = throughput_knee(curve(clock, RATES, oom_from=16), CPU, 256, fraction=0.99)
    assert (knee, sorted(rates)) == (8, [1, 2, 4, 8])
    with pytest.raises(torch.OutOfMemoryError):
        throughput_knee(curve(clock, RATES, oom_from=1), CPU, 256)


def dtype_forward(clock: FakeClock, fp32_s: float, bf16_s: float):
    def forward(b: int, dtype: torch.dtype | None) -> None:
        clock.calls.append((b, dtype))
        clock.now += bf16_s if dtype is torch.bfloat16 else fp32_s

    return forward


def test_precision_settings(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    fwd = dtype_forward(clock, 1.0, 0.5)
    assert choose_precision("none", CPU, fwd).dtype is None
    assert choose_precision("bf16", CPU, fwd).dtype is torch.bfloat16
    assert clock.calls == []  # asked for, not measured
    with pytest.raises(ValueError, match="autocast must be one of"):
        choose_precision("fp16", CPU, fwd)
    monkeypatch.setattr(tuning, "cpu_bf16_capable", lambda: False)
    p = choose_precision("auto", CPU, fwd)
    assert (p.dtype, p.name, clock.calls) == (None, "fp32", [])
    assert "no native bf16" in p.why


@pytest.mark.parametrize(
    "bf16_s,expected",
    [(0.5, torch.bfloat16), (0.85, None), (1.3, None)],
    ids=["2x", "1.18x", "slower"],
)
def test_auto_takes_bf16_only_where_it_measures_faster(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, bf16_s: float, expected
) -> None:
    monkeypatch.setattr(tuning, "cpu_bf16_capable", lambda: True)
    p = choose_precision("auto", CPU, dtype_forward(clock, 1.0, bf16_s), probe_batch=16)
    assert p.dtype is expected
    assert f"bf16 {1 / bf16_s:.2f}x fp32 at batch 16" in p.why
    assert {b for b, _ in clock.calls} == {16} and {d for _, d in clock.calls} == {
        None,
        torch.bfloat16,
    }


def test_a_real_network_is_measured_in_the_precision_it_reports() -> None:
    cfg = preset("tiny", image_size=16, in_channels=1, out_channels=1)
    model = UNet(cfg).eval()
    p = model_precision("auto", model, (1, 16, 16), CPU, probe_batch=4)
    if tuning.cpu_bf16_capable():
        assert p.why.startswith("measured: bf16 ") and "at batch 4" in p.why
        speedup = float(p.why.split("bf16 ")[1].split("x")[0])
        assert (p.dtype is torch.bfloat16) == (speedup >= tuning.CPU_BF16_MIN_SPEEDUP)
    else:
        assert p.dtype is None
    knee, rates = throughput_knee(
        lambda b: tuning.model_forward(model, (1, 16, 16), CPU)(b, p.dtype), CPU, 8, reps=1
    )
    assert knee in rates and set(rates) <= {1, 2, 4, 8} and all(r > 0 for r in rates.values())


def test_the_settings_take_the_same_autocast_names() -> None:
    from typing import get_args

    from app.core.settings import Settings
    from ddpm_core.config.names import AUTOCAST_SETTINGS

    assert get_args(Settings.model_fields["autocast"].annotation) == AUTOCAST_SETTINGS
