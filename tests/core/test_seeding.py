import pytest
import torch

from ddpm_core.seeding import MAX_SEED, NOISE_BLOCK, BatchNoise, ImageRNG


def test_stream_is_a_function_of_the_seed_alone() -> None:
    a, b = ImageRNG(7), ImageRNG(7)
    torch.testing.assert_close(a.initial((1, 4, 4)), b.initial((1, 4, 4)), rtol=0, atol=0)
    for _ in range(NOISE_BLOCK + 3):  # across a block boundary
        torch.testing.assert_close(a.noise((1, 4, 4)), b.noise((1, 4, 4)), rtol=0, atol=0)
    assert (ImageRNG(8).initial((1, 4, 4)) - ImageRNG(7).initial((1, 4, 4))).abs().max() > 0


def test_step_noise_comes_in_blocks_after_x_T() -> None:
    """x_T is the first draw; step noise is drawn NOISE_BLOCK steps at a time."""
    rng, ref = ImageRNG(3), torch.Generator().manual_seed(3)
    x_T = rng.initial((2, 3))
    torch.testing.assert_close(x_T, torch.randn(2, 3, generator=ref), rtol=0, atol=0)
    block1 = torch.randn(NOISE_BLOCK, 2, 3, generator=ref)
    block2 = torch.randn(NOISE_BLOCK, 2, 3, generator=ref)
    draws = torch.stack([rng.noise((2, 3)) for _ in range(NOISE_BLOCK + 2)])
    torch.testing.assert_close(draws, torch.cat([block1, block2[:2]]), rtol=0, atol=0)
    z = rng.noise((2, 3))
    assert torch.isfinite(z).all() and z.dtype == torch.float32


def test_batch_noise_uses_consecutive_seeds() -> None:
    batch = BatchNoise(10, 3)
    x = batch.initial((1, 2, 2))
    for i in range(3):
        torch.testing.assert_close(x[i], ImageRNG(10 + i).initial((1, 2, 2)), rtol=0, atol=0)
    z = batch(0, x)
    alone = ImageRNG(12)
    alone.initial((1, 2, 2))
    torch.testing.assert_close(z[2], alone.noise((1, 2, 2)), rtol=0, atol=0)


def test_seed_range_is_checked() -> None:
    with pytest.raises(ValueError):
        ImageRNG(-1)
    with pytest.raises(ValueError):
        BatchNoise(MAX_SEED, 2)
    ImageRNG(MAX_SEED)


def test_the_generator_lives_on_the_cpu_whatever_the_device() -> None:
    """A seed means one stream on every device: CUDA's Philox would give other numbers."""
    assert ImageRNG(5, "cpu").generator.device.type == "cpu"
    assert ImageRNG(5, "meta").generator.device.type == "cpu"  # any device: drawn on the CPU
    with pytest.raises(ValueError, match="generator_device"):
        ImageRNG(5, "cpu", generator_device="gpu")  # type: ignore[arg-type]


@pytest.mark.parametrize("steps_before", [0, 3, NOISE_BLOCK - 1, NOISE_BLOCK])
def test_rewind_repeats_the_noise_drawn_since_the_mark(steps_before: int) -> None:
    """A step retried after a failure (e.g. out of memory) gets the same noise again,
    also when the failed step drew a new block."""
    rng, ref = ImageRNG(11), ImageRNG(11)
    for r in (rng, ref):
        r.initial((1, 2, 2))
        for _ in range(steps_before):
            r.noise((1, 2, 2))
    mark = rng.mark()
    rng.noise((1, 2, 2))  # the failed attempt
    rng.rewind(mark)
    for _ in range(NOISE_BLOCK + 2):
        torch.testing.assert_close(rng.noise((1, 2, 2)), ref.noise((1, 2, 2)), rtol=0, atol=0)


def test_rewind_refuses_to_go_back_further_than_one_block() -> None:
    rng = ImageRNG(1)
    mark = rng.mark()
    for _ in range(NOISE_BLOCK + 1):  # two blocks
        rng.noise((2,))
    with pytest.raises(ValueError, match="one block"):
        rng.rewind(mark)
