import dataclasses
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny_train_config

from app.cli import train as train_cli
from ddpm_core.checkpoint import load_checkpoint
from ddpm_core.data import load_digits
from ddpm_core.train import (
    MAX_NONFINITE_STEPS,
    STATE_DIR,
    TrainConfig,
    TrainingDiverged,
    batch_indices,
    lr_at,
    train,
)


def _cfg(out: Path, **kw) -> TrainConfig:
    return tiny_train_config(out, **({"steps": 8, "batch_size": 16} | kw))


def test_loss_decreases_on_digits(tmp_path: Path) -> None:
    result = train(_cfg(tmp_path / "ck", steps=80, batch_size=32, warmup=5))
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert last < 0.6 * first, (first, last)
    assert result.step == 80 and not result.stopped and result.skipped_steps == 0


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    # Dropout and label dropout make the run depend on every RNG that is saved.
    kw = dict(
        class_cond=True, unet_overrides={"base_channels": 16, "norm_groups": 4, "dropout": 0.1}
    )
    full = train(_cfg(tmp_path / "full", **kw))
    part = train(_cfg(tmp_path / "part", **kw), progress=lambda p: p.step == 3)
    assert part.stopped and part.step == 3
    assert (tmp_path / "part" / STATE_DIR / "state.json").exists()
    rest = train(_cfg(tmp_path / "part", resume_from=str(tmp_path / "part"), **kw))
    assert rest.step == 8
    assert part.losses + rest.losses == pytest.approx(full.losses, abs=1e-6)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "part" / name)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    meta = json.loads((tmp_path / "part" / "meta.json").read_text())
    assert meta["training_steps"] == 8
    # The curve spans the resumed run as it does the uninterrupted one.
    full_meta = json.loads((tmp_path / "full" / "meta.json").read_text())
    flat = [x for p in meta["loss_curve"] for x in p]
    assert flat == pytest.approx([x for p in full_meta["loss_curve"] for x in p], abs=1e-5)
    assert [p[0] for p in meta["loss_curve"]] == list(range(1, 9))


def test_the_loss_curve_stays_bounded_and_spans_the_run() -> None:
    from ddpm_core.train.reports import LossCurve

    curve = LossCurve(limit=16)
    for step in range(1, 1001):
        curve.add(step, 1.0 / step, 1e-3)
    points = curve.through(1000, 1e-3, 1e-3)
    steps = [int(p[0]) for p in points]
    assert 8 <= len(points) <= 17 and steps[-1] == 1000
    # Evenly spread from the start (the stride's multiples), then the last step itself.
    gaps = {b - a for a, b in zip(steps[:-2], steps[1:-1], strict=True)}
    assert len(gaps) == 1 and steps[0] == next(iter(gaps)) and steps[-2] > 1000 - steps[0]
    assert all(p[1] == pytest.approx(1.0 / p[0], abs=1e-6) for p in points)  # 6 decimals
    again = LossCurve.from_json(curve.to_json())
    assert again == curve
    curve.add(1001, float("nan"), 1e-3)  # a skipped step adds nothing
    assert curve == again


def test_accumulation_matches_one_large_batch(tmp_path: Path) -> None:
    # Same images, t and noise per optimizer step: the losses agree up to float rounding
    # (the second step's loss also checks that the update was the same).
    big = train(_cfg(tmp_path / "big", steps=3, batch_size=16, warmup=0))
    acc = train(_cfg(tmp_path / "acc", steps=3, batch_size=8, accumulate=2, warmup=0))
    assert acc.losses == pytest.approx(big.losses, rel=1e-3)
    assert acc.losses[0] == pytest.approx(big.losses[0], rel=1e-5)


def test_checkpoint_contents_and_provenance(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    seen = []
    result = train(
        _cfg(out, class_cond=True, steps=4, sample_every=2),
        progress=seen.append,
        command="ddpm train --test",
        job_id="job-123",
    )
    ck = load_checkpoint(out)
    assert ck.config.num_classes == 10 and ck.config.default_sampler == "ddim"
    assert ck.config.class_names == [str(i) for i in range(10)]
    assert ck.meta["command"] == "ddpm train --test" and ck.meta["job_id"] == "job-123"
    assert ck.meta["training_steps"] == 4 and math.isfinite(ck.meta["loss"])
    # Directories by name only: meta.json is served as it is.
    assert TrainConfig.from_dict(ck.meta["train_config"]) == _cfg(
        Path("ck"), class_cond=True, steps=4, sample_every=2
    )
    assert (out / "samples.png").read_bytes().startswith(b"\x89PNG")
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert seen[1].sample_png is not None and Path(seen[1].sample_path).exists()
    assert all(p.lr > 0 and p.images_per_sec > 0 for p in seen)
    assert result.final_loss == pytest.approx(seen[-1].loss)
    # The resumable state loads without unrestricted pickle.
    torch.load(out / STATE_DIR / "tensors.pt", weights_only=True)


def test_should_stop_hook_saves_the_last_state(tmp_path: Path) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 2

    result = train(_cfg(tmp_path / "ck", steps=50), should_stop=stop)
    assert result.stopped and result.step == 2
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["training_steps"] == 2


def test_non_finite_losses_are_skipped_and_counted(tmp_path: Path) -> None:
    ds = load_digits(image_size=8)
    ds.pixels = torch.full_like(ds.pixels, float("nan"))
    result = train(_cfg(tmp_path / "ck", steps=3), dataset=ds)
    assert result.skipped_steps == 3 and all(math.isnan(v) for v in result.losses)
    load_checkpoint(tmp_path / "ck")  # weights untouched, still finite


def test_precision_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16"):
        train(_cfg(tmp_path / "fp16", precision="fp16"))
    result = train(_cfg(tmp_path / "bf16", precision="bf16", steps=2))
    assert all(math.isfinite(v) for v in result.losses)


def test_lr_schedule_and_data_order() -> None:
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110, lr_schedule="cosine")
    assert lr_at(cfg, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_at(cfg, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(dataclasses.replace(cfg, lr_schedule="constant"), 100) == 1.0
    # Two epochs of 10 images, 5 per step: each epoch is a permutation.
    order = torch.cat([batch_indices(7, s, 5, 10) for s in range(4)])
    assert sorted(order[:10].tolist()) == list(range(10))
    assert sorted(order[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(7, 3, 5, 10), order[15:])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="p_uncond"):
        TrainConfig(p_uncond=1.5)
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"stepz": 3})
    cfg = TrainConfig(adam_betas=(0.9, 0.99))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", "{tmp}/a", "--precision", "fp16", "--device", "cpu"],
        ["train", "--out", "{tmp}/a", "--dataset", "{tmp}/no_such_folder"],
        ["train", "--out", "{tmp}/a", "--steps", "0"],
        ["train", "--out", "{tmp}/a", "--unet", "nonsense"],
        ["train", "--out", "{tmp}/a", "--unet", "bogus_field=1"],
        ["train", "--out", "{tmp}/a", "--resume"],
        ["eval", "{tmp}/not_a_checkpoint"],
    ],
)
def test_cli_bad_input_exits_with_code_2(tmp_path: Path, argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        train_cli.main([a.format(tmp=tmp_path) for a in argv])
    assert info.value.code == 2
    assert "ddpm: error:" in capsys.readouterr().err


def test_cli_train_then_eval(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    args = [
        "train",
        "--out",
        str(out),
        "--image-size",
        "8",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--class-cond",
        "--unet",
        "base_channels=16",
        "--unet",
        "norm_groups=4",
        "--default-steps",
        "3",
        "--device",
        "cpu",
        "--no-progress",
    ]
    with redirect_stdout(io.StringIO()):
        assert train_cli.main(args) == 0
    with pytest.raises(SystemExit) as info:  # the directory exists now
        train_cli.main(args)
    assert info.value.code == 2
    with redirect_stdout(io.StringIO()):
        assert train_cli.main([*args[:6], "5", "--resume", "--no-progress"]) == 0
    assert json.loads((out / "meta.json").read_text())["training_steps"] == 5
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert train_cli.main(["eval", str(out), "-n", "20", "--guidance", "2", "--json"]) == 0
    report = json.loads(buf.getvalue())
    assert report["generated"]["n"] == 20 and report["guidance"] == 2.0
    assert 0.0 <= report["generated"]["label_accuracy"] <= 1.0
    assert report["real"]["inception_score"] > report["noise"]["inception_score"]


def test_class_conditional_training_on_an_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for name, value in (("dark", 20), ("light", 230)):
        for i in range(3):
            folder = tmp_path / "data" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12 + i, 10), (value, value, value)).save(folder / f"{i}.png")
    (tmp_path / "data" / "light" / "broken.png").write_bytes(b"\x89PNG broken")
    cfg = _cfg(
        tmp_path / "ck",
        dataset=str(tmp_path / "data"),
        channels=3,
        class_cond=True,
        random_flip=True,
        steps=2,
        batch_size=4,
    )
    train(cfg)
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.config.class_names == ["dark", "light"] and ck.config.channels == 3
    assert ck.meta["dataset"]["size"] == 6 and ck.meta["dataset"]["skipped_files"] == 1


def test_meta_names_datasets_and_directories_never_their_paths(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "srv" / "datasets" / "grey"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    out = tmp_path / "srv" / "runs" / "job-1"
    cmd = f"ddpm train --dataset {folder} --out {out} --steps 1"
    train(_cfg(out, dataset=str(folder), steps=1, batch_size=4), command=cmd)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"]["name"] == "grey"
    assert meta["train_config"]["dataset"] == "grey" and meta["train_config"]["out"] == "job-1"
    assert meta["command"] == "ddpm train --dataset grey --out job-1 --steps 1"
    assert str(tmp_path) not in (out / "meta.json").read_text()


def test_infinite_weight_decay_fails_the_run_and_saves_nothing(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "ck", steps=6, save_every=1)
    cfg.weight_decay = float("inf")  # past TrainConfig's own validation, as a bug might
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 1"):
        train(cfg)
    assert not (tmp_path / "ck").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no half-written directory either


def test_a_loss_that_stays_non_finite_fails_the_run(tmp_path: Path) -> None:
    ds = load_digits(image_size=8)
    ds.pixels = torch.full_like(ds.pixels, float("nan"))
    seen = []
    with pytest.raises(TrainingDiverged, match="loss was not finite"):
        train(_cfg(tmp_path / "ck", steps=20), dataset=ds, progress=seen.append)
    assert len(seen) == MAX_NONFINITE_STEPS  # the next step gives up
    assert not (tmp_path / "ck").exists()


def test_non_finite_ema_is_never_saved(tmp_path: Path, monkeypatch) -> None:
    from ddpm_core.ema import EMA

    update = EMA.update

    def poisoned(self, model):  # a finite model, but an average that overflowed
        d = update(self, model)
        next(iter(self.shadow.values())).fill_(float("inf"))
        return d

    monkeypatch.setattr(EMA, "update", poisoned)
    with pytest.raises(TrainingDiverged, match="EMA became non-finite"):
        train(_cfg(tmp_path / "ck", steps=2))
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"weight_decay": float("inf")}, "weight_decay must be finite"),
        ({"lr": float("nan")}, "lr must be finite"),
        ({"grad_clip": float("inf")}, "grad_clip must be finite"),
        ({"adam_betas": (float("nan"), 0.9)}, "adam_betas"),
        ({"adam_betas": (0.9, 1.0)}, "adam_betas"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"unet_overrides": {"base_channels": "16"}}, None),
    ],
)
def test_train_config_refuses_non_finite_values(tmp_path: Path, kw: dict, message) -> None:
    if message is None:  # the network's fields are checked when it is built
        with pytest.raises(ValueError, match="unet_overrides.base_channels must be an integer"):
            train(_cfg(tmp_path / "ck", **kw))
        return
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kw)


def test_v_prediction_training_on_digits_samples_digits(tmp_path: Path) -> None:
    """`ddpm train --prediction v` (100 steps, 8x8) writes a v-prediction checkpoint whose
    samples, by the checkpoint's own default sampler (dpm++2m), score as digits: well
    above noise (IS 2.5 at 8x8), the requested labels recognised (measured: IS 8.9,
    accuracy 0.94)."""
    out = tmp_path / "v"
    args = ["train", "--out", str(out), "--image-size", "8", "--steps", "100",
            "--batch-size", "64", "--lr", "2e-3", "--warmup", "20", "--class-cond",
            "--schedule", "cosine", "--prediction", "v", "--default-sampler", "dpm++2m",
            "--default-steps", "20", "--guidance-scale", "2", "--unet", "base_channels=16",
            "--unet", "norm_groups=4", "--measure-defaults", "off", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    with redirect_stdout(io.StringIO()):
        assert train_cli.main(args) == 0
    ck = load_checkpoint(out)
    assert ck.config.prediction_type == "v_prediction"
    assert ck.config.default_sampler == "dpm++2m"
    assert ck.meta["train_config"]["prediction_type"] == "v_prediction"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert train_cli.main(["eval", str(out), "-n", "100", "--json"]) == 0
    report = json.loads(buf.getvalue())
    assert report["sampler"] == "dpm++2m" and report["steps"] == 20
    generated, noise = report["generated"], report["noise"]
    assert generated["inception_score"] > 2 * noise["inception_score"], report
    assert generated["label_accuracy"] > 0.7, report
    # The prediction type is part of the run: a resume cannot change it.
    with pytest.raises(SystemExit) as info:
        train_cli.main([*args[:6], "120", "--resume", "--prediction", "epsilon"])
    assert info.value.code == 2
