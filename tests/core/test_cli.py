import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def ddpm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "tiny"
    r = ddpm("init", str(path), "--preset", "tiny", "--image-size", "16", "--channels", "1",
             "--num-classes", "10")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return path


def test_sample_writes_pngs_and_a_grid(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = ddpm("sample", str(tiny_ckpt), "-n", "5", "--steps", "8", "--seed", "40", "-o", str(out),
             "--label", "3", "--guidance", "2", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"0000{i}_seed{40 + i}.png" for i in range(5)] + ["grid.png"]
    with Image.open(out / "00002_seed42.png") as img:
        assert img.format == "PNG" and img.size == (16, 16) and img.mode == "L"
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (3 * 18 + 2, 2 * 18 + 2)  # 3 per row, 2-pixel padding
    assert "5 images" in r.stdout


def test_sample_writes_webp_or_jpeg(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = ddpm("sample", str(tiny_ckpt), "-n", "2", "--steps", "4", "--seed", "3", "-o", str(out),
             "--format", "jpeg", "--quality", "80", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00000_seed3.jpg", "00001_seed4.jpg", "grid.jpg"]
    with Image.open(out / "00001_seed4.jpg") as img:
        assert img.format == "JPEG" and img.size == (16, 16)
    assert "grid.jpg" in r.stdout


@pytest.mark.parametrize("sampler", [[], ["--sampler", "dpm++2m"]])
def test_image_i_equals_the_image_sampled_alone(
    tiny_ckpt: Path, tmp_path: Path, sampler: list[str]
) -> None:
    for n, seed, sub in (("3", "7", "batch"), ("1", "9", "alone")):
        r = ddpm("sample", str(tiny_ckpt), "-n", n, "--steps", "5", "--seed", seed, "-o",
                 str(tmp_path / sub), "--no-progress", "--autocast", "none", *sampler)  # fmt: skip
        assert r.returncode == 0, r.stderr
    a = Image.open(tmp_path / "batch" / "00002_seed9.png").tobytes()
    b = Image.open(tmp_path / "alone" / "00000_seed9.png").tobytes()
    # Equal up to batched-kernel rounding: at most one uint8 level on a few pixels.
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    assert max(diffs) <= 1 and sum(d > 0 for d in diffs) <= 5


@pytest.mark.parametrize(
    "args,message",
    [
        (["-n", "0"], "--count"),
        (["--steps", "5000"], "--steps"),
        (["--eta", "2", "--sampler", "ddim"], "--eta"),
        (["--label", "12"], "--label"),
        (["--guidance", "3"], "--guidance needs --label"),
        (["--device", "cuda"], "CUDA"),
        (["--autocast", "fp16"], "--autocast"),
        (["--seed", "-1"], "--seed"),
        (["--format", "jpeg", "--quality", "0"], "--quality"),
        (["--format", "gif"], "--format"),
        (["--sampler", "euler"], "--sampler"),
    ],
)
def test_bad_sample_input_exits_2(
    tiny_ckpt: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    if "--device" in args:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
    r = ddpm("sample", str(tiny_ckpt), "-o", str(tmp_path / "o"), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_or_corrupt_checkpoint_exits_2(tiny_ckpt: Path, tmp_path: Path) -> None:
    r = ddpm("sample", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not a checkpoint directory" in r.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_ckpt.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "ema.safetensors").write_bytes(b"\x00" * 10)
    r = ddpm("sample", str(broken), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "ema.safetensors" in r.stderr and "Traceback" not in r.stderr


def test_init_refuses_to_overwrite(tiny_ckpt: Path) -> None:
    r = ddpm("init", str(tiny_ckpt))
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (tiny_ckpt / "ema.safetensors").exists()
