"""Per-image random streams: image i of a request with seed s draws from seed s+i.

Each image owns a generator that supplies its x_T (one draw) and then the
noise of the steps that draw noise, in blocks of ``NOISE_BLOCK`` steps drawn
at once: one random-number kernel per image per block rather than per step,
which matters on a GPU where a batch of 256 images would otherwise launch 256
tiny kernels every step. An image therefore depends only on its own seed and
sampling parameters, never on which other images shared a batch.
Noise is drawn in float32 whatever the compute dtype, so a seed means the same
image under fp32 and bf16 sampling (up to the network's rounding).

Noise is drawn by a CPU generator whatever the device, then copied there: the
CPU's Mersenne Twister and CUDA's Philox give different numbers for one seed,
so drawing on the device would make a seed mean a different image on a GPU.
The copy goes through pinned memory without blocking, so on a GPU the drawing
overlaps the device's work (about 14 us of CPU per 3x32x32 image per step, see
bench/RESULTS.md). ``generator_device="device"`` draws on the device instead;
that stream depends on the device type, and bench/sampler.py uses it to
measure what drawing on the CPU costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

__all__ = ["MAX_SEED", "NOISE_BLOCK", "ImageRNG", "stack_noise", "BatchNoise"]

MAX_SEED = 2**63 - 1
NOISE_BLOCK = 16


class ImageRNG:
    """The random stream of one image: a ``torch.Generator`` seeded with ``seed``.

    Draws land on ``device``; the generator lives on the CPU unless
    ``generator_device="device"`` (see the module doc).
    """

    def __init__(
        self,
        seed: int,
        device: torch.device | str = "cpu",
        generator_device: Literal["cpu", "device"] = "cpu",
    ) -> None:
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, {MAX_SEED}], got {seed}")
        if generator_device not in ("cpu", "device"):
            raise ValueError(
                f"generator_device must be 'cpu' or 'device', not {generator_device!r}"
            )
        self.seed = seed
        self.device = torch.device(device)
        self._on_host = generator_device == "cpu" or self.device.type == "cpu"
        self.generator = torch.Generator(device="cpu" if self._on_host else self.device)
        self.generator.manual_seed(seed)
        # Pinned host memory lets the copy to the GPU run without waiting for it.
        self._pin = self._on_host and self.device.type == "cuda"
        self._block: torch.Tensor | None = None
        self._used = 0
        self._blocks = 0  # blocks drawn so far
        self._state_before_block: torch.Tensor | None = None  # for rewind

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """The next ``shape`` standard normals of this image's stream (float32)."""
        if not self._on_host:
            return torch.randn(
                tuple(shape), generator=self.generator, device=self.device, dtype=torch.float32
            )
        z = torch.randn(
            tuple(shape), generator=self.generator, dtype=torch.float32, pin_memory=self._pin
        )
        return z if self.device.type == "cpu" else z.to(self.device, non_blocking=self._pin)

    def initial(self, shape: Sequence[int]) -> torch.Tensor:
        """x_T: the first draw of the stream."""
        return self.randn(shape)

    def noise(self, shape: Sequence[int]) -> torch.Tensor:
        """z of the next noisy step, served from a block of NOISE_BLOCK draws."""
        shape = tuple(shape)
        if self._block is None or self._used == NOISE_BLOCK or self._block.shape[1:] != shape:
            self._state_before_block = self.generator.get_state()
            self._block = self.randn((NOISE_BLOCK, *shape))
            self._blocks += 1
            self._used = 0
        self._used += 1
        return self._block[self._used - 1]

    def mark(self) -> tuple[torch.Tensor | None, int, int]:
        """The current point of the :meth:`noise` draws, for :meth:`rewind` (no copy)."""
        return (self._block, self._used, self._blocks)

    def rewind(self, mark: tuple[torch.Tensor | None, int, int]) -> None:
        """Go back to ``mark``: the next :meth:`noise` draws repeat those made since.

        A step that failed after drawing its noise is retried with the same noise.
        At most one new block may have been drawn since ``mark`` (one step draws once).
        """
        block, used, blocks = mark
        if blocks != self._blocks:
            if blocks != self._blocks - 1 or self._state_before_block is None:
                raise ValueError("rewind goes back over at most one block of noise")
            self.generator.set_state(self._state_before_block)
        self._block, self._used, self._blocks = block, used, blocks


def stack_noise(rngs: Sequence[ImageRNG], shape: Sequence[int]) -> torch.Tensor:
    """The next step noise of each stream, stacked to (len(rngs), *shape)."""
    return torch.stack([rng.noise(shape) for rng in rngs])


class BatchNoise:
    """Per-image streams for a batch of images with consecutive seeds s, s+1, ...

    Usable as the ``noise_fn`` of :func:`ddpm_core.samplers.sample`.
    """

    def __init__(
        self,
        seed: int,
        count: int,
        device: torch.device | str = "cpu",
        generator_device: Literal["cpu", "device"] = "cpu",
    ) -> None:
        if seed + count - 1 > MAX_SEED:
            raise ValueError(f"seed + count - 1 must not exceed {MAX_SEED}")
        self.rngs = [ImageRNG(seed + i, device, generator_device) for i in range(count)]

    def initial(self, shape: Sequence[int]) -> torch.Tensor:
        """x_T for every image, shape (count, *shape)."""
        return torch.stack([rng.initial(shape) for rng in self.rngs])

    def __call__(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return stack_noise(self.rngs, x.shape[1:]).to(x.dtype)
