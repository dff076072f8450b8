"""The measured sampling defaults: their statistics, the choice, and a training run that
writes them (config.json's defaults, meta.json's table, samples.png drawn with them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_train_config

from ddpm_core.checkpoint import Checkpoint, CheckpointConfig, load_checkpoint
from ddpm_core.config.unet import training_unet_config
from ddpm_core.images import make_grid, png_bytes
from ddpm_core.measured_defaults import (
    Cell,
    NearestNeighbour,
    Tolerance,
    _cheapest_good,
    _mark_good,
    detail_energy,
    measure_defaults,
)
from ddpm_core.pipeline import generate
from ddpm_core.train import train
from ddpm_core.unet import UNet

pytestmark = pytest.mark.timeout(240)


def _smooth(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=16, mode="bilinear", align_corners=False)


def test_detail_energy_sees_added_noise() -> None:
    x = _smooth(8)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(
        -1, 1
    )
    assert detail_energy(noisy) > 5 * detail_energy(x)
    assert detail_energy(x) == pytest.approx(detail_energy(x.clone()))


def test_nearest_neighbour_tells_separable_classes_apart() -> None:
    x = torch.cat([_smooth(10, 0) * 0.2 - 0.6, _smooth(10, 1) * 0.2 + 0.6])
    y = torch.tensor([0] * 10 + [1] * 10)
    knn = NearestNeighbour(x, y)
    assert knn.leave_one_out() == 1.0
    assert knn.predict(torch.full((2, 3, 16, 16), 0.7)).tolist() == [1, 1]


def _cell(sampler: str, steps: int, noise: float, agree: float | None, calls: int) -> Cell:
    return Cell(sampler, steps, None, calls, noise_ratio=noise, label_agreement=agree)


def test_the_choice_is_the_cheapest_cell_within_tolerance_of_the_best() -> None:
    cells = [
        _cell("ddim", 10, 6.0, 0.95, 10),  # cheapest, but noisy
        _cell("dpm++2m-sde", 20, 1.1, 0.94, 20),  # good enough
        _cell("ddpm", 250, 1.02, 0.96, 250),  # the best, and costly
        _cell("ddpm", 50, 1.05, 0.80, 50),  # clean, wrong classes
    ]
    _mark_good(cells, Tolerance())
    assert [c.good_enough for c in cells] == [False, True, True, False]
    assert _cheapest_good(cells).sampler == "dpm++2m-sde"
    # When no cell is within tolerance of every best, those with the least shortfall are.
    bad = [_cell("a", 10, 4.0, 0.5, 10), _cell("b", 20, 1.0, 0.1, 20)]
    _mark_good(bad, Tolerance())
    assert sum(c.good_enough for c in bad) == 1


def test_measure_defaults_table(tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = training_unet_config("tiny", 8, 3, 2, {"base_channels": 16, "norm_groups": 4})
    ck = Checkpoint(tmp_path, CheckpointConfig(unet=unet), {}, UNet(unet).eval(), "ema")
    data = torch.nn.functional.interpolate(_smooth(12), size=8, mode="area")
    labels = torch.arange(12) % 2
    table = measure_defaults(
        ck, data, labels, images=4, grid=(("ddim", 3), ("ddpm", 5)), guidance_scales=(1.0, 2.0)
    )
    assert [(c.stage, c.sampler, c.steps) for c in table.cells][:2] == [
        (1, "ddim", 3),
        (1, "ddpm", 5),
    ]
    stage2 = [c for c in table.cells if c.stage == 2]
    assert {c.guidance for c in stage2} == {1.0, 2.0}
    assert {(c.sampler, c.steps) for c in stage2} == {(table.sampler, table.steps)}
    assert all(math.isfinite(c.noise_ratio) and c.label_agreement is not None for c in table.cells)
    assert [c.network_calls for c in stage2 if c.guidance == 2.0] == [2 * table.steps]
    d = json.loads(json.dumps(table.to_dict()))
    assert d["chosen"] == {
        "sampler": table.sampler,
        "steps": table.steps,
        "guidance": table.guidance,
    }


def test_training_writes_the_measured_defaults(tmp_path: Path) -> None:
    cfg = tiny_train_config(
        tmp_path / "ck", steps=6, batch_size=16, class_cond=True, measure_defaults="fast",
        measure_images=4,
    )  # fmt: skip
    train(cfg)
    ck = load_checkpoint(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    table = meta["sampling_defaults"]
    assert table["chosen"] == {
        "sampler": ck.config.default_sampler,
        "steps": ck.config.default_steps,
        "guidance": ck.config.default_guidance_scale,
    }
    assert table["configured"] == {"sampler": "ddim", "steps": 4, "guidance": 1.0}
    assert len(table["cells"]) >= 9 and table["seconds"] >= 0
    # samples.png is drawn with the measured defaults: seed 0, labels 0, 1, 0, 1, ...
    images = generate(ck, count=cfg.sample_count, seed=0, labels=[i % 10 for i in range(4)])
    drawn = png_bytes(make_grid(images, nrow=None))
    assert (tmp_path / "ck" / "samples.png").read_bytes() == drawn


def test_measure_off_keeps_the_configured_defaults(tmp_path: Path) -> None:
    cfg = tiny_train_config(tmp_path / "ck", steps=3, batch_size=8, measure_defaults="off")
    train(cfg)
    ck = load_checkpoint(tmp_path / "ck")
    assert (ck.config.default_sampler, ck.config.default_steps) == ("ddim", 4)
    assert "sampling_defaults" not in ck.meta
