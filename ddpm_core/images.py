"""Tensors in [-1, 1] to images: PNG bytes, grids, and animated GIFs of a trajectory."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["to_uint8", "to_pil", "png_bytes", "make_grid", "gif_bytes"]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) or (C, H, W) in [-1, 1] to uint8 (B, H, W, C) / (H, W, C), rounded."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()


def to_pil(x: torch.Tensor) -> Image.Image:
    """One image (C, H, W) in [-1, 1] as a PIL image (L for one channel, RGB for three)."""
    arr = to_uint8(x)
    if arr.shape[-1] == 1:
        return Image.fromarray(arr[..., 0], mode="L")
    if arr.shape[-1] == 3:
        return Image.fromarray(arr, mode="RGB")
    raise ValueError(f"cannot make an image of {arr.shape[-1]} channels")


def png_bytes(image: Image.Image | torch.Tensor) -> bytes:
    """Encode a PIL image or a (C, H, W) tensor in [-1, 1] as PNG."""
    img = to_pil(image) if isinstance(image, torch.Tensor) else image
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def make_grid(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0
) -> torch.Tensor:
    """Tile (B, C, H, W) into one (C, H', W') image, ``nrow`` per row (default ~sqrt(B))."""
    b, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    ncol = math.ceil(b / nrow)
    grid = torch.full(
        (c, ncol * (h + padding) + padding, nrow * (w + padding) + padding),
        pad_value,
        dtype=images.dtype,
    )
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y : y + h, x : x + w] = images[i].cpu()
    return grid


def gif_bytes(
    frames: Sequence[torch.Tensor], duration_ms: int = 80, hold_last_ms: int = 1000
) -> bytes:
    """An animated GIF of ``frames`` (each (C, H, W) in [-1, 1]), looping, last frame held."""
    if not frames:
        raise ValueError("no frames")
    pil = [to_pil(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    durations = [duration_ms] * (len(pil) - 1) + [hold_last_ms]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:], duration=durations, loop=0)
    return buf.getvalue()
