"""Measured choices for serving one network on one device: precision and batch size.

Both are measured on the model itself, not assumed from the device's name: a CPU that
has bf16 instructions can still run a network's bf16 convolutions slower than fp32
(AVX-512 BF16 without AMX, on some layer shapes), and where images/s stops growing with
the batch depends on the network, the device and its thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddpm_core.config.names import AUTOCAST_SETTINGS

__all__ = [
    "Precision",
    "cpu_bf16_capable",
    "autocast_for",
    "choose_precision",
    "model_forward",
    "model_precision",
    "time_forward",
    "throughput_knee",
]

# bf16 is worth its rounding on the CPU only when it is clearly faster there.
CPU_BF16_MIN_SPEEDUP = 1.2

Forward = Callable[[int], object]  # runs one forward of a batch of the given size
DtypeForward = Callable[[int, "torch.dtype | None"], object]
# The batch at which the CPU's bf16 speed is measured: large enough for the convolutions'
# blocking to be representative, small enough to take a fraction of a second.
PRECISION_PROBE_BATCH = 16


@dataclass(frozen=True)
class Precision:
    """How the network runs: ``dtype`` None is fp32; ``why`` says how it was chosen."""

    dtype: torch.dtype | None
    why: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype is torch.bfloat16 else "fp32"


def cpu_bf16_capable() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX) that oneDNN uses."""
    cpu = torch.cpu
    native = (
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return bool(native and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_for(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """The autocast context of ``dtype`` on ``device`` (disabled for fp32)."""
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(forward: Forward, batch: int, device: torch.device, reps: int = 2) -> float:
    """Seconds per call of ``forward(batch)``: the best of ``reps`` after one warm-up call."""
    forward(batch)
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        forward(batch)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def choose_precision(
    setting: str,
    device: torch.device,
    forward: DtypeForward,
    probe_batch: int = PRECISION_PROBE_BATCH,
) -> Precision:
    """The network's precision for ``setting`` (``auto`` | ``bf16`` | ``none``).

    ``none``: fp32. ``bf16``: bf16 (on a CPU without native bf16 it is emulated: slow,
    but what was asked). ``auto``: bf16 on CUDA devices that support it; on a CPU with
    native bf16, bf16 only if ``forward(probe_batch, dtype)`` runs at least
    ``CPU_BF16_MIN_SPEEDUP`` times faster than in fp32; fp32 otherwise.
    """
    if setting not in AUTOCAST_SETTINGS:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_SETTINGS)}, not {setting!r}")
    if setting == "none":
        return Precision(None, "autocast=none")
    if setting == "bf16":
        return Precision(torch.bfloat16, "autocast=bf16")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "CUDA with bf16")
        return Precision(None, "this CUDA device has no bf16")
    if device.type != "cpu" or not cpu_bf16_capable():
        return Precision(None, f"no native bf16 on {device.type}")
    fp32 = time_forward(lambda b: forward(b, None), probe_batch, device)
    bf16 = time_forward(lambda b: forward(b, torch.bfloat16), probe_batch, device)
    speedup = fp32 / bf16
    verdict = f"bf16 {speedup:.2f}x fp32 at batch {probe_batch}"
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        return Precision(torch.bfloat16, f"measured: {verdict}")
    return Precision(None, f"measured: {verdict}, under {CPU_BF16_MIN_SPEEDUP}x")


def throughput_knee(
    forward: Forward,
    device: torch.device,
    limit: int,
    fraction: float = 0.9,
    reps: int = 2,
    flat: float = 1.05,
) -> tuple[int, dict[int, float]]:
    """The smallest power-of-two batch that reaches ``fraction`` of the best rows/s.

    Times ``forward`` at batch 1, 2, 4, ... up to ``limit`` and stops early once two
    doublings in a row gain less than ``flat`` (the curve is flat: larger batches only
    add latency), or at the first batch that runs out of memory. Returns the batch and
    the measured rows/s per batch size.
    ``fraction`` 0 (or >= 1 with everything measured) returns ``limit``.
    """
    if fraction <= 0 or limit <= 1:
        return max(1, limit), {}
    rates: dict[int, float] = {}
    best, stale, batch = 0.0, 0, 1
    while batch <= limit:
        try:
            rates[batch] = batch / time_forward(forward, batch, device, reps)
        except torch.OutOfMemoryError:  # the memory probe's headroom was not enough
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if not rates:
                raise
            break
        if rates[batch] > best * flat:
            stale = 0
        else:
            stale += 1
        best = max(best, rates[batch])
        if stale >= 2:
            break
        batch *= 2
    knee = min(b for b, r in rates.items() if r >= fraction * best)
    return knee, rates


def model_forward(
    model: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    device: torch.device,
    null_label: int | None = None,
    channels_last: bool = False,
) -> DtypeForward:
    """``forward(batch, dtype)``: one call of ``model`` on random images of ``shape``
    under ``dtype``'s autocast (any timestep costs the same; labels are the null label
    of a class-conditional model)."""

    def forward(batch: int, dtype: torch.dtype | None) -> None:
        x = torch.randn(batch, *shape, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.zeros(batch, dtype=torch.long, device=device)
        y = None if null_label is None else torch.full((batch,), null_label, device=device)
        with torch.inference_mode(), autocast_for(device, dtype):
            model(x, t, y)

    return forward


def model_precision(
    setting: str,
    model: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    device: torch.device,
    null_label: int | None = None,
    channels_last: bool = False,
    probe_batch: int = PRECISION_PROBE_BATCH,
) -> Precision:
    """:func:`choose_precision` for a model, measured as the engine measures it: the
    service and ``ddpm sample`` call this, so that they choose alike for a model."""
    forward = model_forward(model, shape, device, null_label, channels_last)
    return choose_precision(setting, device, forward, probe_batch)
