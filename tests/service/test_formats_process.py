"""A real server process with photos as people have them: every input format (HEIC and AVIF included), AVIF
out, metadata kept, without location, or stripped per request and by the server's IMDN_METADATA, and hostile
HEIC/AVIF/EXIF variants refused or trimmed without a 500, the server still up after them."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import numpy as np
import pytest
from PIL import Image, IptcImagePlugin

from tests.live_service import ServiceProcess
from tests.samples import avif, heic, photo_exif, photo_jpeg, smooth_image, srgb_profile, with_claimed_size

MAKE, ORIENTATION, EXIF_IFD, GPS_IFD, PIXEL_X, PIXEL_Y = 0x010F, 0x0112, 0x8769, 0x8825, 0xA002, 0xA003


@pytest.fixture(scope="module")
def server(launch_service: Callable[..., AbstractContextManager[ServiceProcess]]) -> Iterator[ServiceProcess]:
    # strip as the server's default: a request without `metadata` shows the setting was read (the built-in
    # default is nogps).
    # A megapixel input limit lets a small flat AVIF cross it (the uploads here are far below).
    with launch_service({"IMDN_MODELS": "as", "IMDN_METADATA": "strip", "IMDN_MAX_INPUT_PIXELS": "1000000"}) as service:
        yield service


def post(server: ServiceProcess, data: bytes, query: str = "scale=2") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/superresolve?{query}", content=data,
                      headers={"content-type": "application/octet-stream"}, timeout=60)


def image_of(response: httpx.Response, fmt: str = "png") -> Image.Image:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] == f"image/{fmt}"
    img = Image.open(io.BytesIO(response.content))
    img.load()
    assert f"{img.size[0]}x{img.size[1]}" == response.headers["x-output-size"]
    return img


def encoded(fmt: str, array: np.ndarray) -> bytes:
    if fmt == "HEIC":
        return heic(array)
    if fmt == "AVIF":
        return avif(array)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "HEIC", "AVIF"])
def test_every_format_in(server: ServiceProcess, fmt: str) -> None:
    img = image_of(post(server, encoded(fmt, smooth_image(20, 30))))
    assert img.size == (60, 40)


def test_avif_out_with_quality(server: ServiceProcess) -> None:
    data = encoded("PNG", smooth_image(24, 32))
    low, high = (post(server, data, f"scale=2&format=avif&quality={q}") for q in (20, 95))
    assert image_of(low, "avif").size == image_of(high, "avif").size == (64, 48)
    assert len(low.content) < len(high.content)


def test_ten_bit_heic_comes_back_sixteen_bit(server: ServiceProcess) -> None:
    ramp = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    response = post(server, heic(np.dstack([ramp, ramp, ramp])))
    assert image_of(response).size == (64, 48)
    assert response.content[12:16] == b"IHDR" and response.content[24] == 16  # the PNG's bit depth


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "avif"])
def test_metadata_keep_per_output_format(server: ServiceProcess, fmt: str) -> None:
    response = post(server, photo_jpeg(), f"scale=2&format={fmt}&metadata=keep")
    img = image_of(response, fmt)
    assert img.size == (32, 48)  # stored 24x16, orientation 6: upright and doubled
    exif = img.getexif()
    assert exif[MAKE] == "TestCam" and exif.get(ORIENTATION) == 1  # turned once, by the server
    assert (exif.get_ifd(EXIF_IFD)[PIXEL_X], exif.get_ifd(EXIF_IFD)[PIXEL_Y]) == (32, 48)
    assert exif.get_ifd(GPS_IFD)[1] == "N"
    assert b'tiff:Orientation="1"' in img.info["xmp"] and b"GPSLatitude" in img.info["xmp"]
    assert img.info.get("icc_profile") == srgb_profile()
    if fmt == "jpeg":
        assert IptcImagePlugin.getiptcinfo(img)[(2, 116)] == b"(c) A. Person"
        assert response.headers["x-metadata"] == "exif, xmp, iptc"
    else:
        assert response.headers["x-metadata"] == "exif, xmp"
        assert "iptc" in response.headers["x-metadata-dropped"]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "avif"])
def test_metadata_nogps_per_output_format(server: ServiceProcess, fmt: str) -> None:
    img = image_of(post(server, photo_jpeg(), f"scale=2&format={fmt}&metadata=nogps"), fmt)
    exif = img.getexif()
    assert exif[MAKE] == "TestCam" and not exif.get_ifd(GPS_IFD)
    assert b"GPS" not in img.info["xmp"] and b"A. Photographer" in img.info["xmp"]


def test_the_server_says_its_metadata_default(server: ServiceProcess) -> None:
    assert httpx.get(server.url + "/v1/models", timeout=10).json()["metadata"] == "strip"


@pytest.mark.parametrize("query", ["metadata=strip", ""], ids=["asked", "server-default"])
@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "avif"])
def test_metadata_strip_keeps_only_the_colour_profile(server: ServiceProcess, fmt: str, query: str) -> None:
    response = post(server, photo_jpeg(), f"scale=2&format={fmt}&{query}")
    img = image_of(response, fmt)
    assert img.size == (32, 48)
    assert not img.getexif() and "xmp" not in img.info
    assert IptcImagePlugin.getiptcinfo(img) is None
    assert img.info.get("icc_profile") == srgb_profile()
    assert response.headers["x-metadata"] == "none"


def test_metadata_of_heic_and_avif_inputs(server: ServiceProcess) -> None:
    for data in (heic(smooth_image(16, 24), exif=photo_exif(6)), avif(smooth_image(16, 24), exif=photo_exif(6))):
        img = image_of(post(server, data, "scale=2&metadata=keep"))
        assert img.size == (32, 48)
        assert img.getexif()[MAKE] == "TestCam" and img.getexif().get(ORIENTATION, 1) == 1


def test_unknown_metadata_policy_is_400(server: ServiceProcess) -> None:
    response = post(server, photo_jpeg(), "metadata=everything")
    assert response.status_code == 400 and "metadata" in response.json()["detail"]


# --- hostile variants --------------------------------------------------------------------------------


def test_truncated_heic_and_avif_are_422(server: ServiceProcess) -> None:
    for data in (heic(smooth_image(32, 32)), avif(smooth_image(32, 32))):
        for cut in (len(data) // 2, 64):
            response = post(server, data[:cut])
            assert response.status_code == 422, response.text
            assert "truncated or corrupt" in response.json()["detail"]


def test_a_claim_of_100k_by_100k_is_413(server: ServiceProcess) -> None:
    for data in (avif(smooth_image(16, 16)), heic(smooth_image(16, 16))):
        response = post(server, with_claimed_size(data, 100_000, 100_000))
        assert response.status_code == 413, response.text
        assert "100000x100000" in response.json()["detail"]


def test_an_avif_understating_its_frame_is_413(server: ServiceProcess) -> None:
    """libavif decodes the AV1 frame whatever the boxes claim: 1500x1000 in a file whose ispe says 16x16."""
    buffer = io.BytesIO()
    Image.new("RGB", (1500, 1000), (9, 9, 9)).save(buffer, "AVIF", speed=10, quality=10)
    response = post(server, with_claimed_size(buffer.getvalue(), 16, 16))
    assert response.status_code == 413, response.text
    assert "1500x1000" in response.json()["detail"]


def test_a_10_mb_exif_is_not_copied(server: ServiceProcess) -> None:
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(16, 16)).save(buffer, "PNG", exif=photo_exif(1, 16, 16, padding=10 * 2**20))
    response = post(server, buffer.getvalue(), "scale=2&metadata=keep")
    img = image_of(response)
    assert len(response.content) < 100_000 and not img.getexif()
    assert response.headers["x-metadata"] == "none"
    assert response.headers["x-metadata-dropped"].startswith("exif (10,4")


def test_zz_still_serving(server: ServiceProcess) -> None:
    assert httpx.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}
    assert image_of(post(server, encoded("HEIC", smooth_image(16, 16)))).size == (32, 32)
