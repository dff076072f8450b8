"""DDPM_TRAIN_DEVICES: how many training processes a train worker starts, on what; and how
the run of several processes reports back."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.settings import Settings
from worker.train.processes import train_processes


def test_cpu_hosts_train_in_one_process_unless_told() -> None:
    assert train_processes("auto", "cpu") == (1, {}, "cpu")
    assert train_processes("auto", "auto")[0] == 1  # no GPU on this machine
    assert train_processes("cpu", "auto") == (1, {}, "cpu")
    assert train_processes("cpu:3", "auto") == (3, {}, "cpu")


def test_gpu_indices_need_gpus() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        train_processes("0,1", "auto")


@pytest.mark.parametrize("value", ["gpu", "cpu:0", "0,", "-1", "cpu:x", "auto,0"])
def test_bad_settings_are_refused_at_startup(value: str) -> None:
    with pytest.raises(ValidationError, match="train_devices"):
        Settings(train_devices=value)
    assert Settings(train_devices="0,3").train_devices == "0,3"


@pytest.mark.timeout(120)
def test_a_failing_run_reports_its_error(tmp_path) -> None:
    """The ranks' exception reaches the worker as the job's error, and nothing is left."""
    import threading

    from ddpm_core.train import TrainConfig
    from worker.train.processes import ChildFailed, run_processes

    cfg = TrainConfig(out=str(tmp_path / "runs" / "job"), batch_size=1, steps=2, device="cpu")
    seen: list = []
    with pytest.raises(ChildFailed) as err:
        run_processes(
            cfg.to_dict(), 2, {"OMP_NUM_THREADS": "1"}, tmp_path / "runs", "job", seen.append,
            threading.Event(), "test",
        )  # fmt: skip
    assert err.value.type == "ValueError"
    assert "batch_size 1 is smaller than 2 processes" in err.value.message
    assert seen == [] and list((tmp_path / "runs").iterdir()) == []
