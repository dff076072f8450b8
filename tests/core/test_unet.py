import pytest
import torch

from ddpm_core.unet import UNet, UNetConfig, preset, timestep_embedding


def test_ddpm_cifar10_preset_has_the_paper_size() -> None:
    model = UNet(preset("ddpm-cifar10"))
    assert sum(p.numel() for p in model.parameters()) == 35_746_307  # "35.7M" in Ho et al.
    assert model.config.attention_resolutions == (16,)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_presets_run_conditional_and_unconditional(name: str) -> None:
    cfg = preset(name, image_size=16, in_channels=1, out_channels=1, num_classes=10)
    model = UNet(cfg).eval()
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 500, 999])
    with torch.no_grad():
        out = model(x, t, torch.tensor([1, 2, 10]))
        assert out.shape == x.shape
        # Omitted labels mean the null class.
        torch.testing.assert_close(model(x, t), model(x, t, torch.full((3,), 10)))
        # The label changes the output.
        assert (
            model(x, t, torch.tensor([1, 1, 1])) - model(x, t, torch.tensor([2, 2, 2]))
        ).abs().max() > 0
    uncond = UNet(preset(name, image_size=16, in_channels=1, out_channels=1))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.tensor([1, 2, 3]))


def test_attention_heads_are_configurable() -> None:
    cfg = preset("tiny", image_size=8, attention_resolutions=(8,), attention_head_dim=8)
    model = UNet(cfg)
    assert model.down[0].attns[0].heads == 4
    assert model(torch.randn(1, 3, 8, 8), torch.tensor([3])).shape == (1, 3, 8, 8)


def test_config_round_trip_and_validation() -> None:
    cfg = preset("small", num_classes=3, up_attention_resolutions=(16,))
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible"):
        preset("small", image_size=18)
    with pytest.raises(ValueError, match="widht is not a UNetConfig field"):
        UNetConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="unknown UNet preset"):
        preset("huge")


def test_timestep_embedding_is_the_transformer_sinusoid() -> None:
    t = torch.tensor([0.0, 7.0])
    emb = timestep_embedding(t, 8, flip_sin_to_cos=False, freq_shift=0.0)
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(emb[1, :4], torch.sin(7 * freqs))
    torch.testing.assert_close(emb[1, 4:], torch.cos(7 * freqs))
    flipped = timestep_embedding(t, 8, flip_sin_to_cos=True, freq_shift=0.0)
    torch.testing.assert_close(flipped[:, :4], emb[:, 4:])
