"""The diffusers converter refuses what it does not implement, never runs a pickle, and lets
the command line's --variance-type win."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app.cli import main as ddpm
from ddpm_core.checkpoint import read_config
from ddpm_core.convert import (
    ConversionError,
    checkpoint_config_from_diffusers,
    load_diffusers_dir,
    unet_config_from_diffusers,
)

diffusers = pytest.importorskip("diffusers")

TINY = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=[16, 32],
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    layers_per_block=1,
    norm_num_groups=8,
)


def _pipeline_dir(root: Path, **scheduler) -> Path:
    """A saved diffusers pipeline layout: unet/ (safetensors) and scheduler/."""
    torch.manual_seed(0)
    diffusers.UNet2DModel(**TINY).save_pretrained(root / "unet")
    diffusers.DDPMScheduler(**scheduler).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return unet_config_from_diffusers(dict(diffusers.UNet2DModel(**TINY).config))


@pytest.mark.parametrize(
    "scheduler,message",
    [
        ({"prediction_type": "flow_prediction"}, "prediction_type='flow_prediction'"),
        ({"thresholding": True}, "thresholding=True"),
        ({"trained_betas": [0.1] * 10, "num_train_timesteps": 10}, "trained_betas"),
        ({"clip_sample_range": 2.0}, "clip_sample_range=2.0"),
        ({"variance_type": "learned"}, "variance_type='learned'"),
        ({"variance_type": "learned_range"}, "variance_type='learned_range'"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
        ({"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
        ({"num_train_timesteps": "1000"}, "num_train_timesteps must be an integer"),
        ({"beta_end": 5.0}, "beta_end must be at most 1"),
        ({"clip_sample": "yes"}, "clip_denoised must be true or false"),
    ],
)
def test_unimplemented_scheduler_settings_are_refused(tiny_unet, scheduler, message) -> None:
    with pytest.raises(ConversionError, match=message.replace("[", r"\[")):
        checkpoint_config_from_diffusers({"_scheduler": scheduler}, tiny_unet)


def test_supported_scheduler_settings_convert(tiny_unet) -> None:
    for sched, variance in [
        ({}, "fixed_large"),
        ({"variance_type": "fixed_small"}, "fixed_small"),
        ({"variance_type": "fixed_small_log"}, "fixed_small"),
        ({"variance_type": "fixed_large_log"}, "fixed_large"),
        ({"clip_sample": False, "clip_sample_range": 3.0}, "fixed_large"),  # no clipping at all
        ({"prediction_type": "epsilon", "thresholding": False}, "fixed_large"),
    ]:
        cfg = checkpoint_config_from_diffusers({"_scheduler": sched}, tiny_unet)
        assert cfg.variance_type == variance, sched
        assert cfg.prediction_type == "epsilon"
    for prediction in ("v_prediction", "sample"):  # kept: the samplers implement both
        sched = {"_scheduler": {"prediction_type": prediction}}
        assert checkpoint_config_from_diffusers(sched, tiny_unet).prediction_type == prediction
    # An explicit variance type (the command line's flag) wins over the scheduler's.
    sched = {"_scheduler": {"variance_type": "fixed_small"}}
    assert checkpoint_config_from_diffusers(sched, tiny_unet, "fixed_large").variance_type == (
        "fixed_large"
    )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"out_channels": 2}, "learned variance"),
        ({"act_fn": "gelu"}, "act_fn='gelu'"),
        ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"norm_num_groups": 7}, "norm_groups must divide"),
        ({"layers_per_block": "2"}, "layers_per_block|num_res_blocks"),
        ({"sample_size": [8, 16]}, "non-square"),
    ],
)
def test_unimplemented_model_settings_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        unet_config_from_diffusers(TINY | change)


def test_cli_flag_wins_over_the_scheduler_config(tmp_path: Path, capsys) -> None:
    src = _pipeline_dir(tmp_path / "src", variance_type="fixed_small")
    assert ddpm(["convert", str(src), str(tmp_path / "a")]) == 0
    assert read_config(tmp_path / "a").variance_type == "fixed_small"
    assert ddpm(["convert", str(src), str(tmp_path / "b"), "--variance-type", "fixed_large"]) == 0
    assert read_config(tmp_path / "b").variance_type == "fixed_large"
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["converted_from"] == "src" and str(tmp_path) not in json.dumps(meta)
    capsys.readouterr()


def test_cli_refuses_an_unsupported_scheduler_with_exit_2(tmp_path: Path, capsys) -> None:
    src = _pipeline_dir(tmp_path / "src", thresholding=True)
    with pytest.raises(SystemExit) as info:
        ddpm(["convert", str(src), str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "thresholding=True" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_bin_exits_2_with_one_line_and_runs_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(TINY))
    marker = tmp_path / "pwned"
    (src / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Evil(marker)))
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "convert", str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "diffusion_pytorch_model.bin: refused, not a plain state dict" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_unreadable_or_odd_weight_files_are_conversion_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(TINY))
    binf = src / "diffusion_pytorch_model.bin"
    for content, message in [
        (b"\x00\x01garbage", "refused, not a plain state dict"),
        (None, "does not hold a mapping of names to tensors"),
    ]:
        if content is None:
            torch.save([torch.zeros(1)], binf)
        else:
            binf.write_bytes(content)
        with pytest.raises(ConversionError, match=message):
            load_diffusers_dir(src)
    binf.unlink()
    (src / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConversionError, match="not a readable safetensors file"):
        load_diffusers_dir(src)
    (src / "config.json").write_text("[1, 2]")
    with pytest.raises(ConversionError, match="expected a JSON object"):
        load_diffusers_dir(src)


@pytest.mark.timeout(180)
def test_convert_measure_writes_measured_defaults(tmp_path: Path) -> None:
    """``--measure digits``: the converted model's defaults are the measurement's choice,
    and meta.json holds the table next to the defaults the scheduler config gave."""
    src = _pipeline_dir(tmp_path / "pipe", num_train_timesteps=40)
    out = tmp_path / "ck"
    args = ["convert", str(src), str(out), "--measure", "digits", "--measure-images", "4"]
    assert ddpm(args) == 0
    cfg = read_config(out)
    record = json.loads((out / "meta.json").read_text())["sampling_defaults"]
    assert record["chosen"] == {
        "sampler": cfg.default_sampler, "steps": cfg.default_steps, "guidance": None,
    }  # fmt: skip
    assert {(c["sampler"], c["steps"]) for c in record["cells"]} >= {("ddpm", 40), ("ddim", 40)}
    plain = tmp_path / "plain"
    assert ddpm(["convert", str(src), str(plain)]) == 0
    assert record["configured"]["steps"] == read_config(plain).default_steps
    with pytest.raises(SystemExit) as exc:  # a folder without images: exit 2
        ddpm(["convert", str(src), str(tmp_path / "bad"), "--measure", str(tmp_path)])
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
