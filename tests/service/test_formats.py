"""Output formats: WebP and JPEG results decode to the PNG result of the same request
within the format's loss, with their Content-Type, through the disk and the Redis result
stores (the object store, and its presigned URLs, in tests/e2e/test_hosts.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from svc_helpers import decode_png, make_client, submit, wait_job

pytestmark = pytest.mark.timeout(180)

# Measured on the tiny test model (16x16 grey) at quality 90: PSNR 39-44 dB, at most 11
# levels off; the bounds leave room for other images.
MIN_PSNR = {90: 35.0, 100: 48.0}
FORMATS = {"webp": ("webp", "image/webp", "WEBP"), "jpeg": ("jpg", "image/jpeg", "JPEG")}


@pytest.fixture(params=["disk", "redis"])
def store_client(request, settings, worker):
    s = settings.model_copy(update={"result_store": request.param})
    with make_client(s) as c:
        yield c


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _run(client, body: dict) -> dict:
    done = wait_job(client, submit(client, body)["id"])
    assert done["status"] == "succeeded", done
    return done


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_lossy_results_are_the_png_image_within_the_formats_loss(store_client, fmt):
    ext, media, pil_format = FORMATS[fmt]
    body = {"count": 3, "seed": 31, "steps": 6, "sampler": "ddim"}
    png = _run(store_client, body)
    ref = [decode_png(store_client.get(i["url"]).content) for i in png["result"]["images"]]
    for quality in (90, 100):
        done = _run(store_client, body | {"output_format": fmt, "output_quality": quality})
        assert done["request"]["output_format"] == fmt
        assert done["request"]["output_quality"] == quality
        result = done["result"]
        assert result["format"] == fmt
        urls = [i["url"] for i in result["images"]] + [result["grid_url"]]
        assert all(u.endswith(f".{ext}") for u in urls), urls
        for url, want in zip(urls, ref, strict=False):
            r = store_client.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == media
            img = Image.open(io.BytesIO(r.content))
            assert img.format == pil_format and img.size == (16, 16)
            got = np.asarray(img.convert("L"))
            assert _psnr(got, want) >= MIN_PSNR[quality], (fmt, quality, _psnr(got, want))
        grid = Image.open(io.BytesIO(store_client.get(result["grid_url"]).content))
        assert grid.format == pil_format and grid.size == (2 * 18 + 2, 2 * 18 + 2)


def test_a_png_stays_lossless_and_the_default(client):
    done = _run(client, {"count": 1, "seed": 5, "steps": 4})
    assert done["request"]["output_format"] == "png" and done["result"]["format"] == "png"
    r = client.get(done["result"]["grid_url"])  # one image: the grid is the image itself
    assert r.headers["content-type"] == "image/png"
    assert r.content == client.get(done["result"]["images"][0]["url"]).content


def test_a_result_asked_for_in_another_format_is_404_with_its_url(client):
    done = _run(client, {"count": 2, "seed": 1, "steps": 3, "output_format": "webp"})
    job = done["id"]
    r = client.get(f"/jobs/{job}/images/0.png")
    assert r.status_code == 404 and "0.webp" in r.json()["detail"]
    r = client.get(f"/jobs/{job}/grid.jpg")
    assert r.status_code == 404 and "grid.webp" in r.json()["detail"]
    assert client.get(f"/jobs/{job}/images/0.gif").status_code == 422
    assert client.get(f"/jobs/{job}/images/2.webp").status_code == 404  # no such image


@pytest.mark.parametrize(
    "body,field",
    [
        ({"output_format": "gif"}, "output_format"),
        ({"output_format": "JPEG"}, "output_format"),
        ({"output_format": "jpeg", "output_quality": 0}, "output_quality"),
        ({"output_format": "webp", "output_quality": 101}, "output_quality"),
        ({"output_format": "webp", "output_quality": "90"}, "output_quality"),
    ],
)
def test_bad_formats_and_qualities_are_422_naming_the_field(client, body, field):
    r = client.post("/generate", json={"count": 1, "steps": 2} | body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_the_openapi_document_declares_every_format_and_the_redirect(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/jobs/{job_id}/images/{index}.{ext}", "/jobs/{job_id}/grid.{ext}"):
        get = paths[path]["get"]
        assert set(get["responses"]["200"]["content"]) == {"image/png", "image/webp", "image/jpeg"}
        assert "Location" in get["responses"]["307"]["headers"]
        ext = next(p for p in get["parameters"] if p["name"] == "ext")
        assert ext["schema"]["enum"] == ["png", "webp", "jpg"]
