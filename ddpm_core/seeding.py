"""Per-image random streams: image i of a request with seed s draws from seed s+i.

Each image owns a generator that supplies its x_T and then, in order, the
noise of every step that draws noise. An image therefore depends only on its
own seed and sampling parameters, never on which other images shared a batch.
Noise is drawn in float32 whatever the compute dtype, so a seed means the same
image under fp32 and bf16 sampling (up to the network's rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["MAX_SEED", "ImageRNG", "stack_noise", "BatchNoise"]

MAX_SEED = 2**63 - 1


class ImageRNG:
    """The random stream of one image: a ``torch.Generator`` seeded with ``seed``."""

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
        self.seed = seed
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """The next ``shape`` standard normals of this image's stream (float32)."""
        return torch.randn(
            tuple(shape), generator=self.generator, device=self.device, dtype=torch.float32
        )


def stack_noise(rngs: Sequence[ImageRNG], shape: Sequence[int]) -> torch.Tensor:
    """One draw of per-image ``shape`` from each stream, stacked to (len(rngs), *shape)."""
    return torch.stack([rng.randn(shape) for rng in rngs])


class BatchNoise:
    """Per-image streams for a batch of images with consecutive seeds s, s+1, ...

    Usable as the ``noise_fn`` of :func:`ddpm_core.samplers.sample`.
    """

    def __init__(self, seed: int, count: int, device: torch.device | str = "cpu") -> None:
        if seed + count - 1 > MAX_SEED:
            raise ValueError(f"seed + count - 1 must not exceed {MAX_SEED}")
        self.rngs = [ImageRNG(seed + i, device) for i in range(count)]

    def initial(self, shape: Sequence[int]) -> torch.Tensor:
        """x_T for every image, shape (count, *shape)."""
        return stack_noise(self.rngs, shape)

    def __call__(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return stack_noise(self.rngs, x.shape[1:]).to(x.dtype)
