"""POST /v1/superresolve in-process: bodies, sizes, models, formats and the headers a caller reads."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.anyio

URL = "/v1/superresolve"
PNG = {"Content-Type": "image/png"}


async def upscale_raw(client: httpx.AsyncClient, data: bytes, query: str = "",
                      headers: dict[str, str] | None = None) -> httpx.Response:
    return await client.post(f"{URL}?{query}" if query else URL, content=data, headers={**PNG, **(headers or {})})


def image_size(response: httpx.Response) -> tuple[int, int]:
    """(width, height) of the image in the body, decoded completely."""
    img = Image.open(io.BytesIO(response.content))
    img.load()
    return img.size


async def test_superresolve_multipart_upload(client: httpx.AsyncClient, make_image: Callable[..., bytes]) -> None:
    response = await client.post(URL, files={"image": ("in.png", make_image(32, 24), "image/png")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert image_size(response) == (64, 48)  # scale 2 by default
    assert response.headers["x-output-size"] == "64x48"


async def test_superresolve_multipart_form_fields(client: httpx.AsyncClient,
                                                  make_image: Callable[..., bytes]) -> None:
    response = await client.post(URL, files={"image": ("in.png", make_image(32, 24), "image/png")},
                                 data={"scale": "3", "format": "webp", "content": "clean"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert image_size(response) == (96, 72)
    assert response.headers["x-model"] == "x3"


async def test_superresolve_raw_body(client: httpx.AsyncClient, make_image: Callable[..., bytes]) -> None:
    response = await upscale_raw(client, make_image(32, 24), "scale=2")
    assert response.status_code == 200, response.text
    assert image_size(response) == (64, 48)


async def test_superresolve_raw_body_jpeg_input(client: httpx.AsyncClient, make_image: Callable[..., bytes]) -> None:
    response = await client.post(f"{URL}?scale=2", content=make_image(20, 16, "JPEG"),
                                 headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert image_size(response) == (40, 32)


async def test_superresolve_octet_stream_body(client: httpx.AsyncClient, make_image: Callable[..., bytes]) -> None:
    response = await client.post(URL, content=make_image(20, 16),
                                 headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    assert image_size(response) == (40, 32)


@pytest.mark.parametrize(
    ("query", "size", "model"),
    [
        # clean content: the integer networks, and the any-scale default (next integer IMDN, then down)
        ("scale=2&content=clean", (64, 48), "x2"),
        ("scale=2.5&content=clean", (80, 60), "x3+bicubic"),
        ("width=80&content=clean", (80, 60), "x3+bicubic"),  # width only: height follows the aspect ratio
        ("width=64&content=clean", (64, 48), "x2"),  # ... and an exact x2 picks the x2 network
        ("height=72&content=clean", (96, 72), "x3"),  # height only
        ("width=70&height=50&content=clean", (70, 50), "x3+bicubic"),  # both: exactly that size, aspect not kept
        ("height=48&width=100&content=clean", (100, 48), "x4+bicubic"),  # one side may stay as it is
        ("width=80", (80, 60), "as"),  # photos, the default: IMDN_AS whatever the size asked
    ],
)
async def test_superresolve_size_from(client: httpx.AsyncClient, make_image: Callable[..., bytes], query: str,
                                      size: tuple[int, int], model: str) -> None:
    response = await upscale_raw(client, make_image(32, 24), query)
    assert response.status_code == 200, response.text
    assert image_size(response) == size
    assert response.headers["x-output-size"] == f"{size[0]}x{size[1]}"
    assert response.headers["x-model"] == model


@pytest.mark.parametrize(
    ("query", "size", "model"),
    [
        ("model=auto&scale=2", (64, 48), "as"),  # photos (the default content) take IMDN_AS up to 4x
        ("model=auto&scale=3.3", (106, 79), "as"),
        ("model=auto&scale=4", (128, 96), "as"),
        ("model=auto&scale=6", (192, 144), "x4+as"),
        ("model=auto&scale=2&content=clean", (64, 48), "x2"),
        ("model=auto&scale=3&content=clean", (96, 72), "x3"),
        ("model=auto&scale=4&content=clean", (128, 96), "x4"),
        ("model=auto&scale=1.5&content=clean", (48, 36), "x2+bicubic"),
        ("model=auto&scale=6&content=clean", (192, 144), "x4+as"),
        ("model=auto&scale=8", (256, 192), "x4+x2"),
        ("model=x2&scale=2&content=photo", (64, 48), "x2"),  # an explicit model wins over the content
        ("model=x2&scale=2", (64, 48), "x2"),
        ("model=x3&scale=3", (96, 72), "x3"),
        ("model=x4&scale=4", (128, 96), "x4"),
        ("model=as&scale=2", (64, 48), "as"),
        ("model=x2&scale=3", (96, 72), "x2+bicubic"),  # the x2 network, then bicubic to the target
        ("model=x4&width=40", (40, 30), "x4+bicubic"),
    ],
)
async def test_superresolve_model_choice(client: httpx.AsyncClient, make_image: Callable[..., bytes], query: str,
                                         size: tuple[int, int], model: str) -> None:
    response = await upscale_raw(client, make_image(32, 24), query)
    assert response.status_code == 200, response.text
    assert response.headers["x-model"] == model
    assert image_size(response) == size


async def test_superresolve_as_model_on_odd_sizes(client: httpx.AsyncClient,
                                                  make_image: Callable[..., bytes]) -> None:
    """Sides not divisible by 4 take IMDN_AS's ACS path; the size must still be exact."""
    response = await upscale_raw(client, make_image(27, 19), "model=as&width=41&height=30")
    assert response.status_code == 200, response.text
    assert image_size(response) == (41, 30)


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")])
async def test_superresolve_output_format(client: httpx.AsyncClient, make_image: Callable[..., bytes], fmt: str,
                                          pil_format: str) -> None:
    response = await upscale_raw(client, make_image(32, 24), f"scale=2&format={fmt}&quality=80")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"image/{fmt}"
    img = Image.open(io.BytesIO(response.content))
    img.load()
    assert img.format == pil_format
    assert img.size == (64, 48)
    assert f'filename="upscaled.{fmt}"' in response.headers["content-disposition"]


async def test_superresolve_result_headers(client: httpx.AsyncClient, make_image: Callable[..., bytes]) -> None:
    response = await upscale_raw(client, make_image(32, 24), "scale=3&content=clean")
    assert response.status_code == 200, response.text
    assert response.headers["x-input-size"] == "32x24"
    assert response.headers["x-output-size"] == "96x72"
    assert response.headers["x-scale"] == "3x3"
    assert response.headers["x-model"] == "x3"
    assert response.headers["cache-control"] == "no-store"
    timing = response.headers["server-timing"]
    metrics = dict(re.findall(r"(\w+);dur=([0-9.]+)", timing))
    assert set(metrics) == {"decode", "queue", "inference", "encode"}, timing
    assert all(float(value) >= 0 for value in metrics.values())


async def test_superresolve_scale_header_per_axis(client: httpx.AsyncClient,
                                                  make_image: Callable[..., bytes]) -> None:
    response = await upscale_raw(client, make_image(32, 24), "width=64&height=36")
    assert response.status_code == 200, response.text
    assert response.headers["x-scale"] == "2x1.5"  # width factor x height factor


async def test_superresolve_request_id_echoed(client: httpx.AsyncClient, make_image: Callable[..., bytes]) -> None:
    response = await upscale_raw(client, make_image(16, 16), headers={"X-Request-ID": "trace-abc-123"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-abc-123"


async def test_superresolve_request_id_generated(client: httpx.AsyncClient,
                                                 make_image: Callable[..., bytes]) -> None:
    first = await upscale_raw(client, make_image(16, 16))
    second = await upscale_raw(client, make_image(16, 16))
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_superresolve_request_id_unsafe_replaced(client: httpx.AsyncClient,
                                                       make_image: Callable[..., bytes]) -> None:
    response = await upscale_raw(client, make_image(16, 16), headers={"X-Request-ID": "x" * 300})
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_superresolve_request_id_on_errors(client: httpx.AsyncClient,
                                                 assert_problem: Callable[..., dict[str, object]]) -> None:
    response = await upscale_raw(client, b"not an image", headers={"X-Request-ID": "err-42"})
    body = assert_problem(response, 415)
    assert response.headers["x-request-id"] == "err-42"
    assert body["request_id"] == "err-42"


async def test_superresolve_animated_first_frame(client: httpx.AsyncClient) -> None:
    frames = [Image.new("RGB", (20, 12), colour) for colour in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    response = await client.post(f"{URL}?frames=first", content=buffer.getvalue(),
                                 headers={"Content-Type": "image/gif"})
    assert response.status_code == 200, response.text
    assert image_size(response) == (40, 24)
    assert response.headers["x-frames-dropped"] == "2"


async def test_superresolve_keeps_alpha_and_gray(client: httpx.AsyncClient) -> None:
    for mode, size in (("RGBA", (20, 12)), ("L", (12, 20))):
        buffer = io.BytesIO()
        Image.new(mode, size, 128).save(buffer, format="PNG")
        response = await client.post(URL, content=buffer.getvalue(), headers=PNG)
        assert response.status_code == 200, response.text
        img = Image.open(io.BytesIO(response.content))
        assert img.mode == mode
        assert img.size == (2 * size[0], 2 * size[1])


async def test_jpeg_of_an_image_with_alpha_is_flattened_onto_white_and_says_so(client: httpx.AsyncClient) -> None:
    # Left half opaque, right half fully transparent; the colour hidden under alpha 0 is black.
    rgba = np.zeros((16, 24, 4), np.uint8)
    rgba[:, :12] = (30, 90, 200, 255)
    response = await client.post(f"{URL}?format=jpeg", content=encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
                                 headers=PNG)
    assert response.status_code == 200, response.text
    assert response.headers["x-alpha-flattened"] == "white"
    out = np.asarray(Image.open(io.BytesIO(response.content)))
    assert out.shape == (32, 48, 3)
    assert out[:, 30:].min() >= 245  # the transparent half is white, not the black under it
    # No flattening, no header: opaque input, or a format that keeps alpha.
    opaque = await client.post(f"{URL}?format=jpeg", content=encoded(Image.new("RGB", (24, 16), "red"), "PNG"),
                               headers=PNG)
    kept = await client.post(f"{URL}?format=png", content=encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
                             headers=PNG)
    assert opaque.status_code == kept.status_code == 200
    assert "x-alpha-flattened" not in opaque.headers and "x-alpha-flattened" not in kept.headers
    assert Image.open(io.BytesIO(kept.content)).mode == "RGBA"


def encoded(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "in_size", "mode"),
    [
        (lambda: encoded(Image.new("RGB", (1, 1), "red"), "PNG"), (1, 1), "RGB"),
        (lambda: encoded(Image.new("RGB", (1, 9), "red"), "PNG"), (1, 9), "RGB"),
        (lambda: encoded(Image.new("I;16", (20, 12), 40000), "PNG"), (20, 12), "I;16"),  # 16-bit gray stays 16-bit
        (lambda: encoded(Image.new("P", (20, 12), 3), "PNG", transparency=3), (20, 12), "RGBA"),
        (lambda: encoded(Image.new("CMYK", (20, 12), (0, 50, 100, 0)), "JPEG"), (20, 12), "RGB"),
        (lambda: encoded(Image.new("RGB", (20, 12), "blue"), "BMP"), (20, 12), "RGB"),
        (lambda: encoded(Image.new("RGB", (20, 12), "blue"), "TIFF"), (20, 12), "RGB"),
    ],
    ids=["1x1", "1x9", "gray16", "palette-alpha", "cmyk-jpeg", "bmp", "tiff"],
)
async def test_superresolve_input_kinds(client: httpx.AsyncClient, make: Callable[[], bytes],
                                        in_size: tuple[int, int], mode: str) -> None:
    response = await client.post(f"{URL}?scale=2", content=make(), headers={"Content-Type": "image/*"})
    assert response.status_code == 200, response.text
    img = Image.open(io.BytesIO(response.content))
    img.load()
    assert img.size == (2 * in_size[0], 2 * in_size[1])
    assert img.mode == mode


@pytest.mark.parametrize("query", ["scale=1", "width=32", "width=32&height=24", "scale=1&model=as&content=clean"])
async def test_restore_only_keeps_the_size_and_changes_the_pixels(client: httpx.AsyncClient,
                                                                  make_image: Callable[..., bytes],
                                                                  query: str) -> None:
    """Scale 1 (or the input's own width/height) runs IMDN_AS at the input's size: same size, new pixels."""
    data = make_image(32, 24)
    response = await upscale_raw(client, data, query)
    assert response.status_code == 200, response.text
    assert image_size(response) == (32, 24)
    assert response.headers["x-output-size"] == "32x24" and response.headers["x-model"] == "as"
    assert response.headers["x-scale"] == "1x1"
    before = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
    after = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), np.int16)
    assert np.abs(after - before).max() > 0


async def test_restore_only_of_a_clean_image_says_why_not(client: httpx.AsyncClient,
                                                          make_image: Callable[..., bytes]) -> None:
    response = await upscale_raw(client, make_image(32, 24), "scale=1&content=clean")
    assert response.status_code == 400
    assert "nothing for x2/x3/x4 to do" in response.json()["detail"]


@pytest.mark.parametrize(("query", "size"), [
    ("width=100&height=100", (100, 100)),  # fill: the default
    ("width=100&height=100&fit=fill", (100, 100)),
    ("width=100&height=100&fit=contain", (100, 75)),  # 32x24 inside 100x100: the width binds
    ("width=200&height=60&fit=contain", (80, 60)),  # the height binds
    ("width=100&height=100&fit=cover", (100, 100)),
    ("width=200&height=60&fit=cover&format=webp", (200, 60)),
    ("width=200&height=60&fit=contain&format=gif", (80, 60)),  # a still GIF, palette-quantised
])
async def test_fit_sizes(client: httpx.AsyncClient, make_image: Callable[..., bytes], query: str,
                         size: tuple[int, int]) -> None:
    response = await upscale_raw(client, make_image(32, 24), query)
    assert response.status_code == 200, response.text
    assert image_size(response) == size
    assert response.headers["x-output-size"] == f"{size[0]}x{size[1]}"


async def test_fit_cover_crops_the_centre_instead_of_stretching(client: httpx.AsyncClient) -> None:
    """A 40x20 image whose left and right quarters are black and middle white, covering a 40x40 box: only the
    centred 20x20 square (all white) is enlarged; fill would stretch the black edges in."""
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, 10:30] = 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    cover = await upscale_raw(client, buffer.getvalue(), "width=40&height=40&fit=cover&model=as")
    fill = await upscale_raw(client, buffer.getvalue(), "width=40&height=40&model=as")
    assert cover.status_code == fill.status_code == 200
    assert cover.headers["x-scale"] == "2x2"
    cover_px = np.asarray(Image.open(io.BytesIO(cover.content)).convert("L"), np.int16)
    fill_px = np.asarray(Image.open(io.BytesIO(fill.content)).convert("L"), np.int16)
    assert cover_px.shape == fill_px.shape == (40, 40)
    assert fill_px[:, :8].mean() < 64 < 192 < cover_px[:, :8].mean()
