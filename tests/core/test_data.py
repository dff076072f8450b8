from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from ddpm_core.data import DatasetError, load_dataset, load_digits, load_image, load_image_folder


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def test_grayscale_rgb_conversions(tmp_path: Path) -> None:
    _save(Image.new("L", (20, 20), 255), tmp_path / "a.png")
    ds = load_image_folder(tmp_path, image_size=8, channels=3)
    assert ds.pixels.shape == (1, 3, 8, 8)
    x, label = ds[0]
    assert label == -1
    assert torch.allclose(x, torch.ones(3, 8, 8))  # white L -> white RGB in [-1, 1]
    rgb = Image.new("RGB", (20, 20), (255, 0, 0))
    _save(rgb, tmp_path / "b.jpg", quality=95)
    gray = load_image_folder(tmp_path, image_size=8, channels=1)
    assert gray.pixels.shape == (2, 1, 8, 8)
    # ITU-R 601 luma of pure red is ~76: the JPEG decodes near it.
    assert abs(int(gray.pixels[1].float().mean()) - 76) <= 4


def test_rgba_la_and_palette_transparency_composite_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    la = Image.new("LA", (10, 10), (0, 0))
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.info["transparency"] = 0
    _save(rgba, tmp_path / "1_rgba.png")
    _save(la, tmp_path / "2_la.png")
    _save(pal, tmp_path / "3_pal.png", transparency=0)
    opaque_pal = Image.new("P", (10, 10), 1)
    opaque_pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    _save(opaque_pal, tmp_path / "4_pal.png")
    ds = load_image_folder(tmp_path, image_size=10, channels=3)
    px = ds.pixels
    assert px.shape == (4, 3, 10, 10)
    assert bool((px[0, :, 5, 5] == 255).all())  # transparent -> white
    assert bool((px[0, :, 0, 0] == 0).all())  # the opaque black pixel stays black
    assert bool((px[1] == 255).all())
    assert bool((px[2] == 255).all())
    assert px[3, :, 5, 5].tolist() == [10, 200, 30]  # palette colours resolved


def test_sixteen_bit_grayscale_is_scaled(tmp_path: Path) -> None:
    arr = np.full((12, 12), 65535, dtype=np.uint16)
    _save(Image.fromarray(arr), tmp_path / "deep.png")
    x = load_image(tmp_path / "deep.png", image_size=12, channels=1)
    assert x.shape == (1, 12, 12) and int(x.min()) == 255


def test_small_and_non_square_images_resized_and_centre_cropped(tmp_path: Path) -> None:
    _save(Image.new("RGB", (3, 5), (0, 255, 0)), tmp_path / "tiny.png")
    wide = Image.new("L", (60, 20), 0)
    wide.paste(255, (20, 0, 40, 20))  # a white middle third
    _save(wide, tmp_path / "wide.png")
    ds = load_image_folder(tmp_path, image_size=16, channels=1)
    assert ds.pixels.shape == (2, 1, 16, 16)
    tiny = load_image(tmp_path / "tiny.png", 16, 3)
    assert tiny.shape == (3, 16, 16) and int(tiny[1].min()) >= 250
    centre = load_image(tmp_path / "wide.png", 16, 1)
    assert int(centre[0, :, 4:12].min()) >= 250  # the crop keeps the white middle


def test_corrupt_files_are_skipped_and_counted(tmp_path: Path) -> None:
    _save(Image.new("RGB", (8, 8)), tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    full = tmp_path / "trunc_src.jpg"
    _save(Image.effect_noise((64, 64), 50).convert("RGB"), full, quality=90)
    (tmp_path / "truncated.jpg").write_bytes(full.read_bytes()[:300])
    full.unlink()
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    ds = load_image_folder(tmp_path, image_size=8)
    assert len(ds) == 1
    assert ds.skipped == 2
    assert {Path(p).name for p in ds.skipped_files} == {"bad.png", "truncated.jpg"}
    assert ds.describe()["skipped_files"] == 2


def test_empty_or_unusable_folder_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty_set"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty_set") as info:
        load_image_folder(empty, image_size=8)
    assert isinstance(info.value, ValueError)
    (empty / "x.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="1 unreadable"):
        load_image_folder(empty, image_size=8)
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "missing", image_size=8)


def test_labels_from_sub_folders_recursive_sorted(tmp_path: Path) -> None:
    _save(Image.new("L", (8, 8), 0), tmp_path / "zebra" / "z1.png")
    _save(Image.new("L", (8, 8), 0), tmp_path / "ant" / "deeper" / "a1.png")
    _save(Image.new("L", (8, 8), 0), tmp_path / "ant" / "a2.png")
    ds = load_image_folder(tmp_path, image_size=8, channels=1, labels_from_folders=True)
    assert ds.class_names == ["ant", "zebra"]
    assert sorted(ds.labels.tolist()) == [0, 0, 1]
    assert ds.num_classes == 2
    _save(Image.new("L", (8, 8), 0), tmp_path / "loose.png")
    with pytest.raises(DatasetError, match="class sub-folder"):
        load_image_folder(tmp_path, image_size=8, labels_from_folders=True)
    unlabeled = load_image_folder(tmp_path, image_size=8)
    assert len(unlabeled) == 4 and bool((unlabeled.labels == -1).all())


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_is_read(tmp_path: Path) -> None:
    _save(Image.new("RGB", (8, 8), (0, 0, 255)), tmp_path / "c.webp", lossless=True)
    ds = load_image_folder(tmp_path, image_size=8)
    assert ds.pixels[0, 2].min() == 255


def test_digits_dataset() -> None:
    ds = load_digits(image_size=16)
    assert len(ds) == 1797 and ds.pixels.shape == (1797, 1, 16, 16)
    assert ds.pixels.dtype == torch.float32
    assert float(ds.pixels.min()) >= -1.0 and float(ds.pixels.max()) <= 1.0
    assert float(ds.pixels.min()) == -1.0 and float(ds.pixels.max()) > 0.9
    assert sorted(set(ds.labels.tolist())) == list(range(10))
    rgb = load_digits(image_size=8, channels=3)
    assert rgb.pixels.shape == (1797, 3, 8, 8)
    unlabeled = load_dataset("digits", 8, 1, labels=False)
    assert unlabeled.class_names is None and bool((unlabeled.labels == -1).all())


def test_random_flip_is_drawn_from_the_generator(tmp_path: Path) -> None:
    img = Image.new("L", (8, 8), 0)
    img.paste(255, (0, 0, 4, 8))  # white left half
    _save(img, tmp_path / "half.png")
    ds = load_image_folder(tmp_path, image_size=8, channels=1, random_flip=True)
    idx = torch.zeros(64, dtype=torch.long)
    a, _ = ds.batch(idx, torch.Generator().manual_seed(3))
    b, _ = ds.batch(idx, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    left_white = a[:, 0, :, 0] > 0
    assert 0 < int(left_white.all(dim=1).sum()) < 64  # some flipped, some not
