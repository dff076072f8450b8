"""Training data: an image folder (Pillow + numpy) or the built-in ``digits`` set.

Every dataset is held in memory as one tensor, so that a batch is a single
index operation and no DataLoader worker processes are needed: image folders
are stored as uint8 (a quarter of the float size), ``digits`` as float32.
Items are float tensors (C, H, W) in [-1, 1] and an int label (-1 when unlabeled).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "ImageDataset",
    "load_image",
    "load_image_folder",
    "load_digits",
    "load_dataset",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
BUILTIN_DATASETS = ("digits",)


class DatasetError(ValueError):
    """A dataset that cannot be used: no images, a missing folder, unlabeled files, ..."""


@dataclass
class ImageDataset:
    """Images in memory: ``pixels`` (N, C, H, W), uint8 in [0, 255] or float in [-1, 1].

    ``labels`` is (N,) int64, -1 for unlabeled images. ``skipped`` counts files that
    could not be decoded (their paths are in ``skipped_files``).
    """

    name: str
    pixels: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] | None = None
    random_flip: bool = False
    skipped: int = 0
    skipped_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def image_size(self) -> int:
        return self.pixels.shape[-1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[1]

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return x.float() / 127.5 - 1.0  # [0, 255] -> [-1, 1]
        return x.float()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """One image (C, H, W) in [-1, 1] and its label, without augmentation."""
        return self._to_float(self.pixels[i]), int(self.labels[i])

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        """Images at ``indices`` (N, C, H, W) in [-1, 1], without augmentation."""
        return self._to_float(self.pixels[indices])

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels at ``indices``; random horizontal flips drawn from ``generator``
        (a CPU generator) when the dataset has ``random_flip``."""
        x = self._to_float(self.pixels[indices])
        if self.random_flip:
            flip = torch.rand(len(indices), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, self.labels[indices]

    def describe(self) -> dict:
        """A JSON summary for checkpoint metadata."""
        return {
            "name": self.name,
            "size": len(self),
            "image_size": self.image_size,
            "channels": self.channels,
            "class_names": self.class_names,
            "random_flip": self.random_flip,
            "skipped_files": self.skipped,
        }


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """RGB or L, with transparency composited on white (palette/LA/RGBA) and 16-bit scaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs decode to mode I: scale their range to 8 bits instead of clipping.
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "RGBa", "PA") or img.mode == "RGBA":
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def load_image(path: str | os.PathLike, image_size: int, channels: int = 3) -> np.ndarray:
    """Decode one file to uint8 (C, image_size, image_size): the shorter side resized to
    ``image_size`` with antialiasing, then a centre crop. Raises on unreadable files."""
    with Image.open(path) as im:
        im.load()  # decode now, so that a truncated file fails here
        # Camera JPEGs store their orientation in EXIF; apply it as viewers do.
        img = _to_mode(ImageOps.exif_transpose(im), channels)
    w, h = img.size
    scale = image_size / min(w, h)
    nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (nw, nh) != (w, h):
        # LANCZOS with reducing_gap: a box pre-reduction then Lanczos, antialiased and fast.
        img = img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left, top = (nw - image_size) // 2, (nh - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _find_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return found


def load_image_folder(
    root: str | os.PathLike,
    image_size: int,
    channels: int = 3,
    labels_from_folders: bool = False,
    random_flip: bool = False,
    max_images: int | None = None,
) -> ImageDataset:
    """Every PNG/JPEG/WebP under ``root`` (recursively), in sorted path order.

    With ``labels_from_folders`` the label of an image is its first-level
    sub-folder, classes numbered in sorted name order. Files that cannot be
    decoded are skipped and counted. Raises :class:`DatasetError` for a missing
    folder, for no usable image, or for unlabeled files when labels are asked.
    """
    root = Path(root)
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise DatasetError(f"image_size must be >= 1, got {image_size}")
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a directory")
    files = _find_images(root)
    if max_images is not None:
        files = files[:max_images]
    class_names = None
    if labels_from_folders:
        loose = [f for f in files if f.parent == root]
        if loose:
            raise DatasetError(
                f"{root}: labels from folders need every image in a class sub-folder, "
                f"but {len(loose)} lie directly in it (e.g. {loose[0].name})"
            )
        class_names = sorted({f.relative_to(root).parts[0] for f in files})
    class_index = {name: i for i, name in enumerate(class_names or [])}

    arrays, labels, skipped = [], [], []
    with warnings.catch_warnings():
        # Pillow warns about e.g. palette transparency given as bytes; the conversion handles it.
        warnings.simplefilter("ignore", UserWarning)
        for f in files:
            try:
                arrays.append(load_image(f, image_size, channels))
            except (
                OSError,
                UnidentifiedImageError,
                ValueError,
                SyntaxError,
                Image.DecompressionBombError,
            ):
                skipped.append(str(f))
                continue
            labels.append(class_index[f.relative_to(root).parts[0]] if class_names else -1)
    if not arrays:
        detail = f" ({len(skipped)} unreadable files skipped)" if skipped else ""
        raise DatasetError(f"no usable images (PNG/JPEG/WebP) found under {root}{detail}")
    return ImageDataset(
        name=str(root),
        pixels=torch.from_numpy(np.stack(arrays)),
        labels=torch.tensor(labels, dtype=torch.long),
        class_names=class_names,
        random_flip=random_flip,
        skipped=len(skipped),
        skipped_files=skipped,
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) float in [0, 16] and labels 0..9."""
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def load_digits(image_size: int = 16, channels: int = 1, random_flip: bool = False) -> ImageDataset:
    """The built-in ``digits`` set: 1797 8x8 handwritten digits (labels 0..9), upscaled
    bicubically to ``image_size`` and mapped from [0, 16] to [-1, 1] (ink is bright)."""
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels}")
    images, labels = digits_arrays()
    x = torch.from_numpy(images)[:, None] / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False)
        x = x.clamp(-1.0, 1.0)  # bicubic overshoots slightly at edges
    if channels == 3:
        x = x.expand(-1, 3, -1, -1)
    return ImageDataset(
        name="digits",
        pixels=x.contiguous(),
        labels=torch.from_numpy(labels),
        class_names=[str(i) for i in range(10)],
        random_flip=random_flip,
    )


def load_dataset(
    spec: str,
    image_size: int,
    channels: int,
    labels: bool = False,
    random_flip: bool = False,
) -> ImageDataset:
    """``digits`` or an image folder path. ``labels`` asks for class labels (always present
    for ``digits``; from sub-folders for a folder); without it labels are -1."""
    if spec in BUILTIN_DATASETS:
        ds = load_digits(image_size, channels, random_flip)
        if not labels:
            ds.labels = torch.full_like(ds.labels, -1)
            ds.class_names = None
        return ds
    return load_image_folder(spec, image_size, channels, labels, random_flip)
