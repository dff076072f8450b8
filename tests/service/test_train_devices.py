"""DDPM_TRAIN_DEVICES: how many training processes a train worker starts, on what."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings
from worker.train_procs import train_processes


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
