"""ddpm_core.images.to_uint8: its numpy path (CPU float32) equals the torch arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_core.images import to_uint8


def _torch_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).numpy()


@pytest.mark.parametrize("shape", [(3, 32, 32), (16, 1, 16, 16), (4, 3, 8, 8)])
def test_numpy_path_equals_torch_bit_for_bit(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * 1.3  # some values outside [-1, 1]
    flat = x.view(-1)
    # Every exact pixel value and every half step between two (round half to even).
    flat[:256] = torch.arange(256, dtype=torch.float32) / 127.5 - 1
    flat[256:512] = (torch.arange(256, dtype=torch.float32) + 0.5) / 127.5 - 1
    for t in (x, x[..., ::2, :], x.to(memory_format=torch.channels_last) if x.dim() == 4 else x):
        got, want = to_uint8(t), _torch_uint8(t)
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert np.array_equal(got, want)
    with torch.inference_mode():
        y = x * 1
    assert np.array_equal(to_uint8(y), _torch_uint8(y))
    # Other dtypes and tensors that need grad take the torch path; uint8 arrays pass.
    assert np.array_equal(to_uint8(x.bfloat16()), _torch_uint8(x.bfloat16()))
    assert np.array_equal(to_uint8(x.requires_grad_()), _torch_uint8(x.detach()))
    pixels = _torch_uint8(x.detach())
    assert to_uint8(pixels) is pixels
