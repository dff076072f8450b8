"""Fast paths for the network call: channels-last, torch.compile with batch buckets.

Everything here is optional and off by default; :class:`FastDenoiser` with
default options is a plain eager call. Compiled graphs are specialised to a
batch size, so batches are padded up to a few bucket sizes: serving a stream
of changing batch sizes then compiles at most ``len(buckets)`` graphs, all
during warm-up. ``mode="reduce-overhead"`` additionally records CUDA graphs,
which removes per-kernel launch cost where small batches are launch-bound.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["FastOptions", "FastDenoiser", "bucket_for", "probe_max_batch", "DEFAULT_BUCKETS"]

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n (n itself when it exceeds every bucket)."""
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else n


@dataclass(frozen=True)
class FastOptions:
    """How to run the network: all off is plain eager PyTorch."""

    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None  # None (default), "reduce-overhead" (CUDA graphs), ...
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    pad_to_bucket: bool | None = None  # None: pad exactly when compiling


class FastDenoiser(nn.Module):
    """``model(x, t, labels)`` with the chosen fast paths; outputs match eager within tolerance.

    With ``compile`` on, the batch is zero-padded to its bucket (rows are
    independent in this network: GroupNorm normalises per sample, attention
    runs within an image), and the padding is cut off the output.
    """

    def __init__(self, model: nn.Module, options: FastOptions | None = None) -> None:
        super().__init__()
        self.options = opts = options or FastOptions()
        self.model = model
        if opts.channels_last:
            model.to(memory_format=torch.channels_last)
        self._call = model
        if opts.compile:
            self._call = torch.compile(model, mode=opts.compile_mode, dynamic=False)

    @property
    def null_label(self) -> int | None:
        return getattr(self.model, "null_label", None)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        opts = self.options
        n = x.shape[0]
        pad = opts.compile if opts.pad_to_bucket is None else opts.pad_to_bucket
        if pad:
            size = bucket_for(n, opts.buckets)
            if size != n:
                pad = size - n
                x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
                t = torch.cat([t, t.new_zeros(pad)])
                if labels is not None:
                    labels = torch.cat([labels, labels[:1].expand(pad)])
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._call(x, t, labels)
        # Compiled (CUDA-graph) outputs live in buffers that the next call overwrites.
        return out[:n].clone() if opts.compile else out[:n]


_MAX_BATCH_CACHE: dict[tuple, int] = {}


def probe_max_batch(
    model: nn.Module,
    shape: Sequence[int],
    device: torch.device,
    limit: int,
    key: str = "",
    guided: bool = False,
) -> int:
    """The largest batch (a power of two, at most ``limit``) whose forward fits in memory.

    On CUDA it runs forwards of doubling size under inference mode until one
    runs out of memory, keeps 1/2 of the last fitting size as headroom for the
    sampler's own tensors when that size hit the memory ceiling, and caches the
    figure per (key, shape, device). Elsewhere memory is not probed: ``limit``.
    ``guided`` halves the result (classifier-free guidance doubles the batch).
    """
    if device.type != "cuda":
        return limit
    cache_key = (key, tuple(shape), str(device), limit, guided)
    if cache_key in _MAX_BATCH_CACHE:
        return _MAX_BATCH_CACHE[cache_key]
    fits, batch = 0, 1
    with torch.inference_mode():
        while batch <= limit * (2 if guided else 1):
            try:
                x = torch.randn(batch, *shape, device=device)
                model(x, torch.zeros(batch, dtype=torch.long, device=device))
                fits = batch
                batch *= 2
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                torch.cuda.empty_cache()
    ran_out = batch <= limit * (2 if guided else 1)
    best = max(1, (fits // 2 if ran_out else fits) // (2 if guided else 1))
    _MAX_BATCH_CACHE[cache_key] = min(best, limit)
    return _MAX_BATCH_CACHE[cache_key]
