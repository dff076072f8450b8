"""The engine's device set-up, checked without a GPU: torch.cuda.set_device refuses a
device without an index ("cuda", what DDPM_DEVICE=cuda or auto resolves to)."""

from __future__ import annotations

import pytest
import torch
from torch.cuda._utils import _get_device_index

from worker.generate.engine import Engine


def test_the_engine_gives_set_device_an_indexed_cuda_device(monkeypatch) -> None:
    chosen = []

    def set_device(device) -> None:
        chosen.append(_get_device_index(device))  # raises for "cuda" as the real one does

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    for spec in ("cuda", "auto"):
        engine = Engine(spec, threads=1)
        try:
            engine.start()  # nothing touches the device until a job comes
        finally:
            engine.stop()
        assert engine.device == torch.device("cuda", 0)
    assert chosen == [0, 0]


def test_an_engine_without_the_device_fails_to_start_with_the_reason() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        Engine("cuda", threads=1).start()
