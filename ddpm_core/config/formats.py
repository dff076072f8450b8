"""The image formats results are written in: the file extension, the media type and the
quality range of each, in one table (the API, the worker, the CLIs and the client's file
names take them from here)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageFormat", "IMAGE_FORMATS", "OUTPUT_FORMATS", "DEFAULT_QUALITY", "image_format"]


@dataclass(frozen=True)
class ImageFormat:
    """``name`` as a request spells it; ``lossy``: ``quality`` applies."""

    name: str
    extension: str
    media_type: str
    lossy: bool


IMAGE_FORMATS: dict[str, ImageFormat] = {
    f.name: f
    for f in (
        ImageFormat("png", "png", "image/png", lossy=False),
        ImageFormat("webp", "webp", "image/webp", lossy=True),
        ImageFormat("jpeg", "jpg", "image/jpeg", lossy=True),
    )
}
OUTPUT_FORMATS: tuple[str, ...] = tuple(IMAGE_FORMATS)
# Of the lossy formats (1..100): 90 keeps a 32x32 image within a few grey levels.
DEFAULT_QUALITY = 90


def image_format(name_or_extension: str) -> ImageFormat:
    """The format of a name (``jpeg``) or a file extension (``jpg``); KeyError if none."""
    for f in IMAGE_FORMATS.values():
        if name_or_extension in (f.name, f.extension):
            return f
    raise KeyError(name_or_extension)
