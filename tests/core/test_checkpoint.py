import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ddpm_core.checkpoint import (
    CheckpointConfig,
    CheckpointError,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from ddpm_core.pipeline import generate
from ddpm_core.unet import UNet, preset


def _write(path: Path, num_classes: int | None = 4) -> tuple[UNet, UNet]:
    torch.manual_seed(0)
    cfg = preset("tiny", image_size=8, in_channels=1, out_channels=1, num_classes=num_classes)
    model, ema = UNet(cfg), UNet(cfg)
    save_checkpoint(
        path,
        CheckpointConfig(
            unet=cfg, default_steps=10, class_names=list("abcd")[: num_classes or 0] or None
        ),
        model,
        ema,
        meta={"dataset": "test"},
        samples_png=b"\x89PNG fake",
    )
    return model, ema


def test_round_trip_keeps_weights_config_and_meta(tmp_path: Path) -> None:
    model, ema = _write(tmp_path / "ck")
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == [
        "config.json",
        "ema.safetensors",
        "meta.json",
        "model.safetensors",
        "samples.png",
    ]
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.weights == "ema"
    assert loaded.config.unet == model.config
    assert loaded.config.class_names == ["a", "b", "c", "d"]
    assert loaded.meta["dataset"] == "test" and "created_at" in loaded.meta
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, rtol=0, atol=0)
    raw = load_checkpoint(tmp_path / "ck", use_ema=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(raw.model.state_dict()[k], v, rtol=0, atol=0)
    # Sampling from the loaded checkpoint is deterministic in the seed.
    a = generate(loaded, count=2, seed=5, steps=4)
    b = generate(loaded, count=2, seed=5, steps=4)
    assert a.shape == (2, 1, 8, 8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    _write(tmp_path / "ck")
    with pytest.raises(FileExistsError):
        _write(tmp_path / "ck")
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary directory left behind


def test_corrupt_weights_name_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "ck")
    (tmp_path / "ck" / "ema.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"ema\.safetensors.*not a readable safetensors"):
        load_checkpoint(tmp_path / "ck")
    # The raw weights are still intact and loadable.
    assert load_checkpoint(tmp_path / "ck", use_ema=False).weights == "model"


def test_mismatched_weights_are_reported(tmp_path: Path) -> None:
    _write(tmp_path / "ck")
    other = UNet(preset("tiny", image_size=8, in_channels=3, out_channels=3, num_classes=4))
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()},
        str(tmp_path / "ck" / "ema.safetensors"),
    )
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(tmp_path / "ck")
    save_file({"conv_in.weight": torch.zeros(1)}, str(tmp_path / "ck" / "ema.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensors"):
        load_checkpoint(tmp_path / "ck")


def test_non_finite_weights_are_rejected(tmp_path: Path) -> None:
    model, _ = _write(tmp_path / "ck")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["conv_out.bias"][0] = float("nan")
    save_file(sd, str(tmp_path / "ck" / "ema.safetensors"))
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(tmp_path / "ck")


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d["unet"].update(base_channels="x"), "unet.base_channels must be an integer"),
        (lambda d: d.update(variance_type="learned"), "variance_type"),
        (lambda d: d.update(default_steps=5000), "default_steps"),
        (lambda d: d["schedule"].update(kind="sigmoid"), "schedule.kind must be one of"),
        (lambda d: d.pop("unet"), "unet"),
    ],
)
def test_invalid_config_is_a_clear_error(tmp_path: Path, mutate, message: str) -> None:
    _write(tmp_path / "ck")
    cfg_file = tmp_path / "ck" / "config.json"
    data = json.loads(cfg_file.read_text())
    mutate(data)
    cfg_file.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message) as info:
        read_config(tmp_path / "ck")
    assert "config.json" in str(info.value)


def test_missing_files_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(tmp_path / "nothing")
    _write(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "ck")
    _write(tmp_path / "ck2")
    (tmp_path / "ck2" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: file is missing"):
        load_checkpoint(tmp_path / "ck2", use_ema=False)


def test_weights_never_go_through_pickle(tmp_path: Path) -> None:
    """A pickle disguised as weights is refused, and nothing in it runs."""
    _write(tmp_path / "ck")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    torch.save({"x": Evil()}, tmp_path / "ck" / "ema.safetensors")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "ck")
    assert not marker.exists()


def test_generate_in_chunks_gives_the_same_images(tmp_path: Path) -> None:
    _write(tmp_path / "ck")
    ckpt = load_checkpoint(tmp_path / "ck")
    calls: list[int] = []
    whole = generate(ckpt, count=5, seed=3, steps=4, labels=[0, 1, 2, 3, 0])
    chunked = generate(
        ckpt,
        count=5,
        seed=3,
        steps=4,
        labels=[0, 1, 2, 3, 0],
        batch_size=2,
        callback=lambda step, total, x, x0: calls.append(x.shape[0]),
    )
    torch.testing.assert_close(chunked, whole, rtol=0, atol=2e-4)
    assert calls == [2] * 4 + [2] * 4 + [1] * 4
    with pytest.raises(ValueError, match="labels must lie"):
        generate(ckpt, count=2, labels=9)


def test_save_refuses_non_finite_weights(tmp_path: Path) -> None:
    model, _ = _write(tmp_path / "ck")
    before = (tmp_path / "ck" / "ema.safetensors").read_bytes()
    cfg = read_config(tmp_path / "ck")
    for bad in (float("nan"), float("inf")):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        sd["conv_out.bias"][0] = bad
        with pytest.raises(CheckpointError, match=r"ema\.safetensors: refusing to save non-finite"):
            save_checkpoint(tmp_path / "ck", cfg, model, sd, overwrite=True)
        with pytest.raises(CheckpointError, match=r"model\.safetensors: refusing"):
            save_checkpoint(tmp_path / "new", cfg, sd)
    # The existing checkpoint is untouched, nothing new or temporary was written.
    assert (tmp_path / "ck" / "ema.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]
