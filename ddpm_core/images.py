"""Images: tensors in [-1, 1] or uint8 pixels to PNG bytes, grids and animated GIFs.

Every function takes either a float tensor in [-1, 1] (channels first) or uint8 pixels
as a numpy array (channels last, as :func:`to_uint8` makes them). The pixel path runs
no torch op at all: the worker's job threads encode with it, and a torch op there would
start an OpenMP team competing with the engine's (docs/ARCHITECTURE.md, "Threads").
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ddpm_core.config.formats import DEFAULT_QUALITY, IMAGE_FORMATS

__all__ = [
    "Pixels",
    "to_uint8",
    "to_pil",
    "png_bytes",
    "encode_image",
    "make_grid",
    "gif_bytes",
]

Pixels = torch.Tensor | np.ndarray


def to_uint8(x: Pixels) -> np.ndarray:
    """(B, C, H, W) or (C, H, W) in [-1, 1] to uint8 (B, H, W, C) / (H, W, C), rounded.
    uint8 arrays are returned as they are."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise ValueError(f"pixel arrays must be uint8, not {x.dtype}")
        return x
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()


def to_pil(x: Pixels) -> Image.Image:
    """One image ((C, H, W) tensor or (H, W, C) pixels) as a PIL image (L or RGB)."""
    arr = to_uint8(x)
    if arr.shape[-1] == 1:
        return Image.fromarray(arr[..., 0], mode="L")
    if arr.shape[-1] == 3:
        return Image.fromarray(arr, mode="RGB")
    raise ValueError(f"cannot make an image of {arr.shape[-1]} channels")


def png_bytes(image: Image.Image | Pixels) -> bytes:
    """Encode a PIL image, a (C, H, W) tensor in [-1, 1] or (H, W, C) pixels as PNG."""
    img = image if isinstance(image, Image.Image) else to_pil(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_image(
    image: Image.Image | Pixels, output_format: str = "png", quality: int = DEFAULT_QUALITY
) -> bytes:
    """Encode one image in ``output_format`` (a name of ``IMAGE_FORMATS``); ``quality``
    (1..100) applies to the lossy formats."""
    if output_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {output_format!r}; one of {list(IMAGE_FORMATS)}")
    if output_format == "png":
        return png_bytes(image)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, not {quality}")
    img = image if isinstance(image, Image.Image) else to_pil(image)
    buf = io.BytesIO()
    if output_format == "webp":
        # method 4: Pillow's default speed; lossy, as JPEG, so quality means the same.
        img.save(buf, format="WEBP", quality=quality, method=4)
    else:
        # Full-resolution chroma: at 32x32, 4:2:0 would halve the colour of every pixel.
        img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def make_grid(
    images: Pixels, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0
) -> Pixels:
    """Tile a batch into one image, ``nrow`` per row (default ~sqrt(B)), white padding.

    A (B, C, H, W) tensor gives a (C, H', W') tensor; (B, H, W, C) pixels give
    (H', W', C) pixels (``pad_value`` in [-1, 1] either way)."""
    if isinstance(images, np.ndarray):
        b, h, w, c = images.shape
        fill = np.uint8(round((pad_value + 1) * 127.5))
        pixels = True
    else:
        b, c, h, w = images.shape
        pixels = False
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    ncol = math.ceil(b / nrow)
    size = (ncol * (h + padding) + padding, nrow * (w + padding) + padding)
    if pixels:
        grid: Pixels = np.full((*size, c), fill, dtype=np.uint8)
    else:
        grid = torch.full((c, *size), pad_value, dtype=images.dtype)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        if pixels:
            grid[y : y + h, x : x + w] = images[i]
        else:
            grid[:, y : y + h, x : x + w] = images[i].cpu()
    return grid


def gif_bytes(frames: Sequence[Pixels], duration_ms: int = 80, hold_last_ms: int = 1000) -> bytes:
    """An animated GIF of ``frames`` (images as :func:`to_pil` takes them), looping, the
    last frame held."""
    if not frames:
        raise ValueError("no frames")
    pil = [to_pil(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    durations = [duration_ms] * (len(pil) - 1) + [hold_last_ms]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0)
    return buf.getvalue()
