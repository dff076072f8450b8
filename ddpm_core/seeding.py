"""Per-image random streams: image i of a request with seed s draws from seed s+i.

Each image owns a generator that supplies its x_T (one draw) and then the
noise of the steps that draw noise, in blocks of ``NOISE_BLOCK`` steps drawn
at once: one random-number kernel per image per block rather than per step,
which matters on a GPU where a batch of 256 images would otherwise launch 256
tiny kernels every step. An image therefore depends only on its own seed and
sampling parameters, never on which other images shared a batch.
Noise is drawn in float32 whatever the compute dtype, so a seed means the same
image under fp32 and bf16 sampling (up to the network's rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["MAX_SEED", "NOISE_BLOCK", "ImageRNG", "stack_noise", "BatchNoise"]

MAX_SEED = 2**63 - 1
NOISE_BLOCK = 16


class ImageRNG:
    """The random stream of one image: a ``torch.Generator`` seeded with ``seed``."""

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
        self.seed = seed
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self._block: torch.Tensor | None = None
        self._used = 0

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """The next ``shape`` standard normals of this image's stream (float32)."""
        return torch.randn(
            tuple(shape), generator=self.generator, device=self.device, dtype=torch.float32
        )

    def initial(self, shape: Sequence[int]) -> torch.Tensor:
        """x_T: the first draw of the stream."""
        return self.randn(shape)

    def noise(self, shape: Sequence[int]) -> torch.Tensor:
        """z of the next noisy step, served from a block of NOISE_BLOCK draws."""
        shape = tuple(shape)
        if self._block is None or self._used == NOISE_BLOCK or self._block.shape[1:] != shape:
            self._block = self.randn((NOISE_BLOCK, *shape))
            self._used = 0
        self._used += 1
        return self._block[self._used - 1]


def stack_noise(rngs: Sequence[ImageRNG], shape: Sequence[int]) -> torch.Tensor:
    """The next step noise of each stream, stacked to (len(rngs), *shape)."""
    return torch.stack([rng.noise(shape) for rng in rngs])


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
        return torch.stack([rng.initial(shape) for rng in self.rngs])

    def __call__(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return stack_noise(self.rngs, x.shape[1:]).to(x.dtype)
