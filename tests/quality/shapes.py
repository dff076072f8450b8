"""A user's image folder, made up: two classes of coloured shapes, and a judge of samples
that knows how they were drawn (it uses none of the project's quality code).

``red/``: red discs; ``blue/``: blue squares, both on a light background with a gentle
gradient, at random positions and sizes; saved as PNG, JPEG and WebP, some in nested
folders, as a user's folder would be. The judge reads a sample's colour inside its shape
(the saturated pixels) and its high-frequency noise (the energy of a 3x3 Laplacian),
against the training images'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "make_shapes_folder", "colour_right", "laplacian_energy", "judge"]

CLASSES = ("blue", "red")  # sorted: the label of a folder is its rank among the names
_COLOURS = {"red": (200, 40, 40), "blue": (40, 60, 200)}
_FORMATS = (
    ("PNG", ".png", {}),
    ("JPEG", ".jpg", {"quality": 95}),
    ("WEBP", ".webp", {"quality": 95}),
)


def _draw(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    base = rng.uniform(200, 235)
    ramp = np.linspace(-12, 12, size)[None, :, None] * rng.choice([-1.0, 1.0])
    bg = np.clip(base + ramp + np.zeros((size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, "RGB")
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.34) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    colour = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in _COLOURS[kind])
    box = (cx - r, cy - r, cx + r, cy + r)
    (d.ellipse if kind == "red" else d.rectangle)(box, fill=colour)
    return img


def make_shapes_folder(root: Path, per_class: int = 150, size: int = 32, seed: int = 0) -> Path:
    """Write ``per_class`` images of each class under ``root`` (formats and nesting mixed)."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        for i in range(per_class):
            fmt, ext, kw = _FORMATS[i % 3]
            sub = root / kind / (f"batch{i % 2}" if i % 4 < 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            _draw(kind, size, rng).save(sub / f"{kind}_{i:04d}{ext}", fmt, **kw)
    return root


def _to_unit(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) in [0, 1], 8-bit quantised as a PNG."""
    x = np.clip((np.asarray(images, dtype=np.float64) + 1) / 2, 0, 1)
    return np.round(x * 255).transpose(0, 2, 3, 1) / 255


def colour_right(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image: whether the mean colour of its saturated pixels (the shape) is its class's.

    An image without a shape (fewer than 4 saturated pixels) is wrong."""
    x = _to_unit(images)
    saturation = x.max(axis=-1) - x.min(axis=-1)
    right = np.zeros(len(x), dtype=bool)
    for i, (img, sat) in enumerate(zip(x, saturation, strict=True)):
        inside = sat > 0.3
        if inside.sum() < 4:
            continue
        r, _, b = img[inside].mean(axis=0)
        right[i] = (r > b) == (CLASSES[int(labels[i])] == "red")
    return right


def laplacian_energy(images: np.ndarray) -> float:
    """Mean squared response of the 3x3 Laplacian over the images' interiors."""
    x = _to_unit(images)
    lap = x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4 * x[:, 1:-1, 1:-1]
    return float((lap**2).mean())


def judge(samples: np.ndarray, labels: np.ndarray, training: np.ndarray) -> dict:
    """Colour right (fraction) and Laplacian noise ratio of ``samples`` against ``training``
    (both (N, 3, H, W) in [-1, 1] at the model's size)."""
    return {
        "colour_right": float(colour_right(samples, labels).mean()),
        "noise_ratio": laplacian_energy(samples) / laplacian_energy(training),
    }
