"""Checkpoint configs: every field type- and range-checked, the model's size bounded before
anything is allocated, all without torch."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ddpm_core.checkpoint import (
    CheckpointConfig,
    CheckpointError,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from ddpm_core.config.checks import ConfigError
from ddpm_core.config.size import activation_bytes, check_model_size, parameter_count
from ddpm_core.config.unet import UNetConfig, preset, training_unet_config
from ddpm_core.unet import UNet


def _config(**unet) -> dict:
    cfg = preset("tiny", image_size=8, in_channels=1, out_channels=1, num_classes=4, **unet)
    return CheckpointConfig(unet=cfg, default_steps=10, class_names=list("abcd")).to_dict()


def _write_ckpt(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = CheckpointConfig.from_dict(_config())
    save_checkpoint(path, cfg, UNet(cfg.unet))
    return path


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.update(default_steps="abc"), "default_steps must be an integer, got 'abc'"),
        (lambda d: d.update(default_steps=2.5), "default_steps must be an integer"),
        (lambda d: d.update(default_steps=True), "default_steps must be an integer"),
        (lambda d: d.update(default_steps=0), "default_steps must be at least 1"),
        (lambda d: d.update(default_steps=1001), "default_steps must be at most 1000"),
        (lambda d: d.update(default_eta=1.5), "default_eta must be at most 1.0"),
        (lambda d: d.update(default_eta="0"), "default_eta must be a number"),
        (lambda d: d.update(default_guidance_scale=-1), "default_guidance_scale must be at least"),
        (lambda d: d.update(default_guidance_scale=float("inf")), "must be finite"),
        (lambda d: d.update(default_guidance_scale=float("nan")), "must be finite"),
        (lambda d: d.update(default_sampler="euler"), "default_sampler must be one of"),
        (lambda d: d.update(variance_type="learned_range"), "variance_type must be one of"),
        (lambda d: d.update(clip_denoised="yes"), "clip_denoised must be true or false"),
        (lambda d: d.update(format_version=True), "format_version"),
        (lambda d: d.update(format_version="1"), "format_version"),
        (lambda d: d.update(class_names=["a"]), "class_names must have one name per class"),
        (lambda d: d.update(class_names=[1, 2, 3, 4]), "class_names must be a list of strings"),
        (lambda d: d.update(num_classes="10"), "num_classes must equal"),
        (lambda d: d.update(image_size=16), "image_size must equal"),
        (lambda d: d.update(unet=[1]), "unet must be an object"),
        (lambda d: d.update(schedule="x"), "schedule must be an object, got 'x'"),
        (lambda d: d.update(schedule={"kind": "nope"}), "schedule.kind must be one of"),
        (lambda d: d.update(schedule={"kind": ["linear"]}), "schedule.kind must be one of"),
        (
            lambda d: d.update(schedule={"num_train_timesteps": "1000"}),
            "schedule.num_train_timesteps must be an integer",
        ),
        (
            lambda d: d.update(schedule={"num_train_timesteps": 10**9}),
            "schedule.num_train_timesteps must be at most",
        ),
        (lambda d: d.update(schedule={"beta_end": 2.0}), "schedule.beta_end must be at most 1"),
        (lambda d: d.update(schedule={"beta_start": 0}), "schedule.beta_start must be above 0"),
        (lambda d: d.update(schedule={"kind": "cosine", "beta_end": 0.1}), "schedule.beta_end"),
        (lambda d: d["unet"].update(base_channels="32"), "unet.base_channels must be an integer"),
        (lambda d: d["unet"].update(base_channels=0), "unet.base_channels must be at least 1"),
        (lambda d: d["unet"].update(base_channels=32.0), "unet.base_channels must be an integer"),
        (lambda d: d["unet"].update(num_classes="10"), "unet.num_classes must be an integer"),
        (lambda d: d["unet"].update(num_classes=0), "unet.num_classes must be at least 1"),
        (lambda d: d["unet"].update(channel_mult=[]), "unet.channel_mult must have 1 to"),
        (lambda d: d["unet"].update(channel_mult=2), "unet.channel_mult must be a list"),
        (lambda d: d["unet"].update(channel_mult=[1, 0]), r"unet.channel_mult\[1\] must be at"),
        (lambda d: d["unet"].update(channel_mult=[1, "2"]), r"unet.channel_mult\[1\] must be an"),
        (lambda d: d["unet"].update(attention_resolutions=[-8]), "unet.attention_resolutions"),
        (lambda d: d["unet"].update(attention_resolutions=None), "unet.attention_resolutions"),
        (lambda d: d["unet"].update(up_attention_resolutions="8"), "up_attention_resolutions"),
        (lambda d: d["unet"].update(attention_head_dim=0), "unet.attention_head_dim"),
        (lambda d: d["unet"].update(attention_head_dim=7), "unet.attention_head_dim must divide"),
        (lambda d: d["unet"].update(dropout=1.0), "unet.dropout must be below 1"),
        (lambda d: d["unet"].update(norm_eps=0), "unet.norm_eps must be above 0"),
        (lambda d: d["unet"].update(norm_groups=5), "unet.norm_groups must divide"),
        (lambda d: d["unet"].update(mid_attention=1), "unet.mid_attention must be true or false"),
        (lambda d: d["unet"].update(freq_shift=float("nan")), "unet.freq_shift must be finite"),
        (lambda d: d["unet"].update(downsample_padding=2), "unet.downsample_padding"),
        (lambda d: d["unet"].update(image_size=7), "unet.image_size must be divisible by 2"),
        (lambda d: d["unet"].update(image_size=0), "unet.image_size must be at least 1"),
        (lambda d: d["unet"].update(out_channels=2), "unet.out_channels must equal in_channels"),
        (lambda d: d["unet"].update(widht=3), "unet.widht is not a UNetConfig field"),
    ],
)
def test_each_bad_field_is_named_with_the_file(tmp_path: Path, mutate, message: str) -> None:
    ck = _write_ckpt(tmp_path / "ck")
    data = json.loads((ck / "config.json").read_text())
    mutate(data)
    (ck / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message) as info:
        read_config(ck)
    assert str(info.value).startswith(str(ck / "config.json") + ": ")
    assert info.value.public_message.startswith("config.json: ")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ck)


def test_valid_configs_still_round_trip() -> None:
    d = _config(attention_resolutions=(4,), attention_head_dim=16)
    parsed = CheckpointConfig.from_dict(d)
    filled = d["schedule"] | {"beta_start": 1e-4, "beta_end": 0.02}
    assert parsed.to_dict() == d | {"schedule": filled}
    assert CheckpointConfig.from_dict(parsed.to_dict()) == parsed
    assert CheckpointConfig.from_dict(json.loads(json.dumps(d))).unet.channel_mult == (1, 2)


def test_config_checks_need_no_torch(tmp_path: Path) -> None:
    ck = _write_ckpt(tmp_path / "ck")
    code = (
        "import sys\n"
        "from ddpm_core.config.checkpoint import read_config, check_config_size\n"
        "from ddpm_core.config.size import parameter_count\n"
        f"cfg = read_config({str(ck)!r})\n"
        f"print(check_config_size({str(ck)!r}, cfg)[0], parameter_count(cfg.unet))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n = sum(p.numel() for p in load_checkpoint(ck).model.parameters())
    assert out.stdout.split() == [str(n), str(n)]


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("tiny", {}),
        ("small", {}),
        ("ddpm-cifar10", {}),
        ("tiny", {"num_classes": 10, "in_channels": 1, "out_channels": 1, "image_size": 16}),
        ("small", {"num_classes": 3, "up_attention_resolutions": (16,), "attention_head_dim": 16}),
        ("small", {"channel_mult": (1, 3), "num_res_blocks": 3, "mid_attention": False}),
        ("tiny", {"attention_resolutions": (32, 16), "base_channels": 48, "norm_groups": 12}),
        ("tiny", {"channel_mult": (2, 1, 4), "image_size": 12, "num_classes": 1}),
    ],
)
def test_closed_form_parameter_count_equals_the_built_unet(name: str, overrides: dict) -> None:
    cfg = preset(name, **overrides)
    built = sum(p.numel() for p in UNet(cfg).parameters())
    assert parameter_count(cfg) == built
    if name == "ddpm-cifar10":
        assert built == 35_746_307


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("tiny", {}),
        ("small", {"num_classes": 3, "dropout": 0.0}),
        ("small", {"image_size": 16, "attention_head_dim": 16}),
        ("tiny", {"image_size": 32, "attention_resolutions": (16, 8)}),
    ],
)
def test_activation_estimate_bounds_what_a_forward_pass_keeps(name: str, overrides: dict) -> None:
    """The estimate is an upper bound of the activations a training forward pass keeps
    (every saved tensor that is not a parameter), and not wildly above it."""
    cfg = preset(name, **overrides)
    torch.manual_seed(0)
    model = UNet(cfg).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            saved[st.data_ptr()] = st.nbytes()
        return t

    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, torch.tensor([3]))
    measured = sum(saved.values())
    assert measured <= activation_bytes(cfg) <= 3 * measured


def test_model_size_limits() -> None:
    cfg = preset("ddpm-cifar10")
    params, act = check_model_size(cfg, 35_746_307, 2**30)
    assert params == 35_746_307 and 0 < act < 2**30
    with pytest.raises(ConfigError, match="35,746,307 parameters, above the limit of 35,746,306"):
        check_model_size(cfg, 35_746_306, None)
    with pytest.raises(ConfigError, match="GiB of activations per image"):
        check_model_size(cfg, None, act - 1)
    # The defaults admit the DDPM models of the paper (256x256 LSUN: 114 M parameters).
    lsun = preset("ddpm-cifar10", image_size=256, channel_mult=(1, 1, 2, 2, 4, 4))
    assert 110e6 < check_model_size(lsun)[0] < 120e6


def test_planted_huge_config_is_refused_before_allocation(tmp_path: Path) -> None:
    ck = _write_ckpt(tmp_path / "ck")
    data = json.loads((ck / "config.json").read_text())
    data["unet"].update(base_channels=8192, channel_mult=[1, 2], norm_groups=32)
    (ck / "config.json").write_text(json.dumps(data))
    assert len((ck / "config.json").read_bytes()) < 1500
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="parameters, above the limit"):
        load_checkpoint(ck)  # ~3.9 G parameters: 16 GB if allocated
    assert time.perf_counter() - t0 < 30  # generous: the refusal allocates nothing
    # An explicit lower limit applies too, and activations have their own.
    _write_ckpt(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="above the limit of 1,000"):
        load_checkpoint(tmp_path / "ok", max_params=1000)
    with pytest.raises(CheckpointError, match="activations per image"):
        load_checkpoint(tmp_path / "ok", max_activation_bytes=1000)
    assert load_checkpoint(tmp_path / "ok", max_params=None, max_activation_bytes=None)


def test_base_channels_65536_is_refused(tmp_path: Path) -> None:
    ck = _write_ckpt(tmp_path / "ck")
    data = json.loads((ck / "config.json").read_text())
    data["unet"]["base_channels"] = 65536
    (ck / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="unet.base_channels must be at most"):
        load_checkpoint(ck, max_params=None, max_activation_bytes=None)


def test_training_overrides_are_checked_by_field() -> None:
    cfg = training_unet_config("tiny", 16, 1, 10, {"base_channels": 64, "channel_mult": [1, 2]})
    assert cfg.base_channels == 64 and cfg.channel_mult == (1, 2) and cfg.num_classes == 10
    for overrides, message in [
        ({"base_channels": "64"}, "unet_overrides.base_channels must be an integer"),
        ({"base_channels": 10**9}, "unet_overrides.base_channels must be at most"),
        ({"image_size": 32}, "unet_overrides.image_size is set by the run"),
        ({"bogus": 1}, "unet_overrides.bogus is not a UNetConfig field"),
        ({"norm_groups": 7}, "unet_overrides.norm_groups must divide"),
        ({"dropout": float("inf")}, "unet_overrides.dropout must be finite"),
    ]:
        with pytest.raises(ConfigError, match=message):
            training_unet_config("tiny", 16, 1, None, overrides)
    with pytest.raises(ConfigError, match="^image_size must be divisible"):
        training_unet_config("ddpm-cifar10", 20, 3, None, {})


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="base_channels must be an integer"):
        UNetConfig(base_channels="128")  # type: ignore[arg-type]
    assert UNetConfig(dropout=0).dropout == 0.0  # ints are fine where a float is expected
