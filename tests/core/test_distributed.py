"""Data-parallel training with real processes (gloo on the CPU), launched by torchrun.

The claim under test: N processes with the same global batch train the same model as
one process -- the same loss at every step and the same final weights, to float
rounding -- and a run saved by one number of processes continues with another.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_helpers import tiny_train_config

from ddpm_core.distributed import DistContext
from ddpm_core.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(240)

# A tiny network on 8x8 digits; the weights of runs that agree differ by Adam-amplified
# rounding only (about 5e-5 here), those of runs that do not by the size of the updates.
ARGS = [
    "--dataset", "digits", "--preset", "tiny", "--image-size", "8",
    "--unet", "base_channels=16", "--unet", "norm_groups=4", "--lr", "2e-3", "--warmup", "2",
    "--sample-count", "4", "--default-steps", "4", "--device", "cpu", "--no-progress",
]  # fmt: skip
WEIGHTS_ATOL = 3e-4


def _cfg(out: Path, **kw) -> TrainConfig:
    return tiny_train_config(out, **kw)


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _ddpm_train(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app.cli.train", "train", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=200)


def _curve(progress_file: Path) -> list[float]:
    lines = [json.loads(x) for x in progress_file.read_text().splitlines()]
    assert lines[-1]["event"] == "done", lines[-1]
    return [x["loss_raw"] for x in lines if "event" not in x]


def _max_diff(a: Path, b: Path, name: str) -> float:
    x, y = load_file(a / name), load_file(b / name)
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_are_disjoint_and_cover_the_batch() -> None:
    for world in (1, 2, 3, 4):
        for size in (4, 5, 9, 16):
            rows: list[int] = []
            weights = 0.0
            for rank in range(world):
                ctx = DistContext(world, rank, rank, None)  # type: ignore[arg-type]
                sl = ctx.shard(100, size)
                rows += range(sl.start, sl.stop)
                weights += ctx.grad_weight(size) / world
            assert rows == list(range(100, 100 + size))  # in order, each row once
            assert weights == pytest.approx(1.0)  # DDP's average of the weighted means


def test_two_processes_train_the_same_model_as_one(tmp_path: Path) -> None:
    # Class labels with label dropout, 9 rows split 5 + 4, and two micro-batches per step
    # (gradients all-reduced on the second only).
    kw = dict(steps=16, batch_size=9, accumulate=2, class_cond=True)
    one = train(_cfg(tmp_path / "one", **kw))
    r = _ddpm_train(
        *ARGS, "--steps", "16", "--batch-size", "9", "--accumulate", "2", "--class-cond",
        "--out", str(tmp_path / "two"), "--progress-file", str(tmp_path / "two.jsonl"),
        "--nproc-per-node", "2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x2 processes" in r.stdout
    two = _curve(tmp_path / "two.jsonl")
    assert len(two) == 16
    assert two == pytest.approx(one.losses, rel=1e-5)
    for name in ("model.safetensors", "ema.safetensors"):
        assert _max_diff(tmp_path / "one", tmp_path / "two", name) < WEIGHTS_ATOL, name
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["processes"] == 2 and meta["images_seen"] == 16 * 18
    # The check can fail: another seed trains visibly different weights.
    other = train(_cfg(tmp_path / "other", seed=1, **kw))
    assert other.losses != pytest.approx(one.losses, rel=1e-3)
    assert _max_diff(tmp_path / "one", tmp_path / "other", "model.safetensors") > 10 * WEIGHTS_ATOL


def test_resume_with_another_number_of_processes(tmp_path: Path) -> None:
    # A constant learning rate: a run of 12 steps resumed with --steps 24 is the first
    # half of a 24-step run.
    kw = dict(batch_size=8, lr_schedule="constant")
    ref = train(_cfg(tmp_path / "ref", steps=24, **kw))

    # 2 processes for 12 steps, then 1 process to step 24.
    r = _ddpm_train(
        *ARGS, "--steps", "12", "--batch-size", "8", "--lr-schedule", "constant",
        "--out", str(tmp_path / "a"), "--progress-file", str(tmp_path / "a.jsonl"),
        "--nproc-per-node", "2",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    first = _curve(tmp_path / "a.jsonl")
    rest = train(_cfg(tmp_path / "a", steps=24, resume_from=str(tmp_path / "a"), **kw))
    assert first + rest.losses == pytest.approx(ref.losses, rel=1e-5)
    for name in ("model.safetensors", "ema.safetensors"):
        assert _max_diff(tmp_path / "ref", tmp_path / "a", name) < WEIGHTS_ATOL, name

    # 1 process for 12 steps, then 2 "hosts" (two torchrun agents meeting through a c10d
    # rendezvous on loopback, one process each) to step 24.
    part = train(_cfg(tmp_path / "b", steps=12, **kw))
    port = _free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "resume",
        "-m", "app.cli.train", "train", "--resume", "--steps", "24",
        "--out", str(tmp_path / "b"), "--progress-file", str(tmp_path / "b.jsonl"), "--no-progress",
    ]  # fmt: skip
    out = subprocess.PIPE
    hosts = [
        subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outs = [h.communicate(timeout=200)[0].decode(errors="replace") for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    second = _curve(tmp_path / "b.jsonl")
    assert part.losses + second == pytest.approx(ref.losses, rel=1e-5)
    for name in ("model.safetensors", "ema.safetensors"):
        assert _max_diff(tmp_path / "ref", tmp_path / "b", name) < WEIGHTS_ATOL, name
    meta = json.loads((tmp_path / "b" / "meta.json").read_text())
    assert meta["training_steps"] == 24 and meta["processes"] == 2


def test_launcher_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    r = _ddpm_train(*ARGS, "--out", str(tmp_path / "x"), "--nproc-per-node", "0")
    assert r.returncode == 2 and "--nproc-per-node must be >= 1" in r.stderr
    r = _ddpm_train(*ARGS, "--out", str(tmp_path / "x"), "--lr", "-1", "--nproc-per-node", "2")
    assert r.returncode == 2 and "lr must be > 0" in r.stderr and "Traceback" not in r.stderr
    r = _ddpm_train(
        *ARGS, "--out", str(tmp_path / "x"), "--batch-size", "1", "--nproc-per-node", "2"
    )
    assert r.returncode == 2 and "smaller than 2 processes" in r.stderr
    assert not (tmp_path / "x").exists()
