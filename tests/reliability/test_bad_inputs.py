"""A corpus of bad, odd and hostile inputs, generated here (no binaries in the repo).

Every case must end in a documented 4xx with an application/problem+json body, or a correct image;
never a 500, never a hang (every request has a deadline). Most cases run in-process (the real app
with its lifespan, behind httpx.ASGITransport); a subset runs against a real uvicorn process, where
the socket-level cases (slow upload, oversized bodies) belong. After the corpus, the service must
still answer /healthz and a normal request.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability.reliability_support import (
    InProcessApp,
    RealServer,
    animated,
    check_any,
    check_error,
    check_image,
    check_problem,
    cmyk_jpeg,
    encode,
    hand_png,
    jpeg_with_exif_orientation,
    make_settings,
    multipart,
    noise,
    pixels,
    png16,
    png_chunk,
    png_chunks,
    raw_http,
    with_png_size,
    ycck_jpeg,
)

# Small limits so the "too large" cases are cheap; everything else is far below them.
MAX_INPUT_PIXELS = 200_000
MAX_UPLOAD = 256 * 1024
MAX_OUTPUT_PIXELS = 1_000_000
LIMITS = {"max_input_pixels": MAX_INPUT_PIXELS, "max_upload_bytes": MAX_UPLOAD,
          "max_output_pixels": MAX_OUTPUT_PIXELS}

SMALL_PNG = encode(noise(16, 16))
SMALL_JPEG = encode(noise(16, 16), "JPEG", quality=90)
SMALL_WEBP = encode(noise(16, 16), "WEBP", quality=90)
SMALL_GIF = encode(noise(16, 16), "GIF")


@pytest.fixture(scope="module")
def app(weights_dir: Path) -> Iterator[InProcessApp]:
    app = InProcessApp(make_settings(weights_dir, **LIMITS))
    yield app
    try:  # the whole corpus leaves nothing behind
        assert app.state.admission.admitted == 0, "requests still counted in flight after the corpus"
        assert app.state.pool.pending == 0
        assert app.state.pool.alive()
    finally:
        app.close()


def timed(app: InProcessApp, data: bytes, query: str = "", **kwargs: object) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = app.upscale(data, query, **kwargs)  # type: ignore[arg-type]
    return response, time.perf_counter() - started


# --- not images -------------------------------------------------------------------------


def test_empty_body(app: InProcessApp) -> None:
    check_error(app.upscale(b""), {415})


@pytest.mark.parametrize("body", [
    b"hello, this is not a picture",
    b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
    b'{"image": "data:image/png;base64,iVBORw0KGgo="}',
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
    bytes(range(256)) * 4,
], ids=["text", "html", "json", "pdf", "svg", "binary-noise"])
def test_not_an_image_posing_as_png(app: InProcessApp, body: bytes) -> None:
    check_error(app.upscale(body, content_type="image/png"), {415})


def test_png_signature_only(app: InProcessApp) -> None:
    check_error(app.upscale(SMALL_PNG[:8]), {415, 422})


# --- truncated and corrupt ------------------------------------------------------------------


def truncations(data: bytes, count: int = 10) -> list[int]:
    """`count` cut points spread over the file, from inside the header to just before the end."""
    return sorted({max(1, len(data) * k // (count + 1)) for k in range(1, count + 1)} | {len(data) - 1})


@pytest.mark.parametrize("fmt,data", [("png", SMALL_PNG), ("jpeg", SMALL_JPEG), ("webp", SMALL_WEBP)])
def test_truncated(app: InProcessApp, fmt: str, data: bytes) -> None:
    """Cut at many offsets: a 415/422 problem, or (if only trailing bytes went) the right image."""
    outcomes = {}
    for cut in truncations(data):
        response = app.upscale(data[:cut], "scale=2", content_type=f"image/{fmt}")
        if response.status_code == 200:
            check_image(response, (32, 32))
        else:
            check_error(response, {415, 422})
        outcomes[cut] = response.status_code
    assert any(s != 200 for s in outcomes.values()), outcomes


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP", "PNG"])
def test_truncated_multiframe(app: InProcessApp, fmt: str) -> None:
    """Truncated animations: counting their frames reads past the cut; upscaling every frame (issue 29) meets
    the cut in a later frame: 422 or the frames there are, never 500."""
    data = animated(fmt, [noise(16, 16, seed=s) for s in range(3)])
    for cut in truncations(data, 12):
        response = app.upscale(data[:cut], "scale=2", content_type="application/octet-stream")
        if response.status_code == 200:
            check_image(response, (32, 32))
        else:
            check_error(response, {415, 422})


def test_truncated_header_of_known_format_is_422(app: InProcessApp) -> None:
    """A recognised format cut inside its header is damaged, not foreign: 422 (was 415 before be7ace2)."""
    for data in (SMALL_JPEG[: len(SMALL_JPEG) // 3], SMALL_WEBP[: len(SMALL_WEBP) // 2]):
        check_error(app.upscale(data, "scale=2"), {422})


def replace_chunk(data: bytes, kind: bytes, payload: bytes | None = None, crc: int | None = None) -> bytes:
    for offset, name, old in png_chunks(data):
        if name == kind:
            new = png_chunk(kind, old if payload is None else payload, crc)
            return data[:offset] + new + data[offset + 12 + len(old) :]
    raise AssertionError(f"no {kind!r} chunk")


def test_corrupt_idat(app: InProcessApp) -> None:
    idat = bytearray(next(p for _, k, p in png_chunks(SMALL_PNG) if k == b"IDAT"))
    for at in (0, 1, len(idat) // 3, len(idat) // 2, len(idat) - 5):
        broken = bytearray(idat)
        broken[at] ^= 0x5A
        response = app.upscale(replace_chunk(SMALL_PNG, b"IDAT", bytes(broken)), "scale=2")
        if response.status_code == 200:  # a flip inside a stored/literal run can still inflate
            check_image(response, (32, 32))
        else:
            check_error(response, {415, 422})
    # Not zlib at all.
    check_error(app.upscale(replace_chunk(SMALL_PNG, b"IDAT", b"\x00" * 64), "scale=2"), {422})


def test_bad_crc(app: InProcessApp) -> None:
    check_error(app.upscale(replace_chunk(SMALL_PNG, b"IHDR", crc=0xDEADBEEF), "scale=2"), {415, 422})
    response = app.upscale(replace_chunk(SMALL_PNG, b"IDAT", crc=0xDEADBEEF), "scale=2")
    if response.status_code == 200:  # Pillow does not verify IDAT checksums: the pixels are intact
        check_image(response, (32, 32))
    else:
        check_error(response, {422})


@pytest.mark.parametrize("width,height", [(0, 16), (16, 0), (0, 0)])
def test_zero_dimension_header(app: InProcessApp, width: int, height: int) -> None:
    check_error(app.upscale(hand_png(width, height), "scale=2"), {415, 422})


# --- tiny and thin images ------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(1, 1), (1, 37), (41, 1), (2, 3)])
@pytest.mark.parametrize("query,factor", [("scale=2", 2), ("scale=3", 3), ("scale=4", 4), ("scale=2.5", 2.5)])
def test_tiny_images(app: InProcessApp, height: int, width: int, query: str, factor: float) -> None:
    response = app.upscale(encode(noise(height, width, seed=height * 100 + width)), query)
    def side(n: int) -> int:  # halves round up (model/engine.py target_size)
        return max(n, math.floor(n * factor + 0.5))

    check_image(response, (side(width), side(height)))


def test_thin_image_by_target_width(app: InProcessApp) -> None:
    response = app.upscale(encode(noise(1, 37)), "width=111")
    check_image(response, (111, 3))


# --- too large ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png-patched", "png-hand", "gif", "jpeg"])
def test_decompression_bomb_header(app: InProcessApp, fmt: str) -> None:
    """Headers claiming a gigapixel image over a tiny body: 413 from the header, before any decoding."""
    if fmt == "png-patched":
        data = with_png_size(SMALL_PNG, 65535, 65535)
    elif fmt == "png-hand":
        data = hand_png(65535, 65535, rows=b"\x00" * 1024)
    elif fmt == "gif":
        gif = bytearray(SMALL_GIF)
        gif[6:10] = (65535).to_bytes(2, "little") * 2  # logical screen width, height
        at = gif.find(b"\x2c")  # image descriptor: its frame, too
        gif[at + 5 : at + 9] = (65535).to_bytes(2, "little") * 2
        data = bytes(gif)
    else:
        jpeg = bytearray(SMALL_JPEG)
        at = jpeg.find(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
        jpeg[at + 5 : at + 9] = (65500).to_bytes(2, "big") * 2
        data = bytes(jpeg)
    response, elapsed = timed(app, data, "scale=2", content_type="application/octet-stream")
    problem = check_error(response, {413})
    assert "pixels" in problem["detail"]
    assert elapsed < 2.0, f"a bomb took {elapsed:.2f} s to refuse"


def test_real_zlib_bomb(app: InProcessApp) -> None:
    """A genuine 16-megapixel PNG of zeros (~16 KB compressed): refused from its header, fast."""
    data = encode(np.zeros((4000, 4000), np.uint8), compress_level=9)
    assert len(data) < MAX_UPLOAD
    response, elapsed = timed(app, data, "scale=2")
    check_error(response, {413})
    assert elapsed < 2.0


def test_past_the_pixel_limit(app: InProcessApp) -> None:
    data = encode(np.zeros((500, 500, 3), np.uint8))  # 250,000 > 200,000
    problem = check_error(app.upscale(data, "scale=2"), {413})
    assert f"{MAX_INPUT_PIXELS:,}" in problem["detail"]


def test_past_the_output_pixel_limit(app: InProcessApp) -> None:
    data = encode(np.zeros((300, 300, 3), np.uint8))  # x4 -> 1.44 MP > 1 MP
    check_error(app.upscale(data, "scale=4"), {413})


# --- formats and colour modes ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_first_frame(app: InProcessApp, fmt: str) -> None:
    frames = [noise(16, 16, seed=s) for s in range(3)]
    data = animated(fmt, frames)
    response = app.upscale(data, "scale=2&frames=first", content_type="application/octet-stream")
    check_image(response, (32, 32))
    assert response.headers["x-frames-dropped"] == "2"
    # The first frame as Pillow decodes it (GIF: palette-quantised), sent as a still PNG: the same output.
    first = Image.open(io.BytesIO(data))
    first.seek(0)
    still = app.upscale(encode(first.convert("RGB")), "scale=2")
    check_image(still, (32, 32))
    assert "x-frames-dropped" not in still.headers
    np.testing.assert_array_equal(pixels(response)[..., :3], pixels(still)[..., :3])


@pytest.mark.parametrize("make", [cmyk_jpeg, ycck_jpeg], ids=["cmyk", "ycck"])
def test_cmyk_and_ycck_jpeg(app: InProcessApp, make: object) -> None:
    data = make()  # type: ignore[operator]
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = check_image(app.upscale(data, "scale=2", content_type="image/jpeg"), (32, 32))
    assert img.mode == "RGB"


def test_16bit_gray_png_stays_16bit(app: InProcessApp) -> None:
    values = np.random.default_rng(1).integers(0, 65536, (12, 10)).astype(np.uint16)
    img = check_image(app.upscale(png16(values), "scale=2"), (20, 24))
    assert img.mode.startswith("I;16") or img.mode == "I", img.mode


def alpha_halves_16(height: int, width: int) -> np.ndarray:
    rgba = np.random.default_rng(2).integers(0, 65536, (height, width, 4)).astype(np.uint16)
    rgba[:, :, 3] = 0
    rgba[:, width // 2 :, 3] = 65535
    return rgba


def test_16bit_color_png_inflate_bomb(app: InProcessApp) -> None:
    """A 10x10 16-bit colour PNG whose IDAT inflates to 200 MB: read only as far as the image needs.

    Was: the 16-bit colour decoder inflated the whole stream first (~1000:1, so a 32 MB upload -> ~32 GB).
    """
    idat = zlib.compress(b"\x00" * (200 * 2**20), 9)
    data = hand_png(10, 10, 16, 2, extra=b"")[:33] + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    assert len(data) < MAX_UPLOAD
    response, elapsed = timed(app, data, "scale=2")
    check_image(response, (20, 20))
    assert elapsed < 3.0, f"{elapsed:.2f} s: the whole stream was inflated"


def test_16bit_color_png_exif_orientation(app: InProcessApp) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png16(np.random.default_rng(0).integers(0, 65536, (16, 24, 3)).astype(np.uint16))
    data = data[:33] + png_chunk(b"eXIf", exif.tobytes()) + data[33:]
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6
    check_image(app.upscale(data, "scale=2"), (32, 48))


def test_16bit_rgba_png_keeps_alpha(app: InProcessApp) -> None:
    img = check_image(app.upscale(png16(alpha_halves_16(12, 16)), "scale=2"), (32, 24))
    alpha = np.asarray(img.convert("RGBA"))[:, :, 3]
    assert alpha[:, :12].max() <= 8 and alpha[:, 20:].min() >= 247, alpha


def test_16bit_gray_alpha_png_keeps_alpha(app: InProcessApp) -> None:
    img = check_image(app.upscale(png16(alpha_halves_16(12, 16)[:, :, 2:]), "scale=2"), (32, 24))
    alpha = np.asarray(img.convert("RGBA"))[:, :, 3]
    assert alpha[:, :12].max() <= 8 and alpha[:, 20:].min() >= 247


def test_palette_png_with_transparency(app: InProcessApp) -> None:
    indices = np.zeros((12, 16), np.uint8)
    indices[:, 8:] = 1
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    data = encode(palette, transparency=0)  # index 0 (the left half) is fully transparent
    img = check_image(app.upscale(data, "scale=2"), (32, 24))
    assert img.mode == "RGBA"
    alpha = np.asarray(img)[:, :, 3]
    assert alpha[:, :12].max() <= 8 and alpha[:, 20:].min() >= 247


def test_gray_alpha_png(app: InProcessApp) -> None:
    la = np.stack([noise(12, 16, 1), np.where(np.arange(16) < 8, 0, 255).astype(np.uint8)[None].repeat(12, 0)], -1)
    img = check_image(app.upscale(encode(Image.fromarray(la, mode="LA")), "scale=2"), (32, 24))
    assert img.mode == "LA"


@pytest.mark.parametrize("kind", ["rgb-trns", "gray16-trns"])
def test_color_key_transparency_kept(app: InProcessApp, kind: str) -> None:
    if kind == "rgb-trns":
        rgb = noise(12, 16)
        rgb[:, :8] = 0
        data = encode(rgb, transparency=(0, 0, 0))
    else:
        gray = np.full((12, 16), 40000, np.uint16)
        gray[:, :8] = 0
        data = encode(Image.fromarray(gray), transparency=0)
    img = check_image(app.upscale(data, "scale=2"), (32, 24))
    assert img.mode in ("RGBA", "LA"), f"transparency lost: output mode {img.mode}"


@pytest.mark.parametrize("orientation,rotated", [(1, False), (3, False), (6, True), (8, True)])
def test_exif_orientation(app: InProcessApp, orientation: int, rotated: bool) -> None:
    data = jpeg_with_exif_orientation(noise(16, 24), orientation)  # stored 24 wide, 16 high
    expected = (32, 48) if rotated else (48, 32)
    response = app.upscale(data, "scale=2", content_type="image/jpeg")
    check_image(response, expected)
    assert response.headers["x-input-size"] == ("16x24" if rotated else "24x16")


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_other_output_formats(app: InProcessApp, fmt: str) -> None:
    check_image(app.upscale(SMALL_PNG, f"scale=2&format={fmt}&quality=50"), (32, 32), fmt=fmt)


@pytest.mark.parametrize("fmt,width", [("webp", 5000), ("jpeg", 20000)])
def test_output_past_the_format_limit(app: InProcessApp, fmt: str, width: int) -> None:
    response = app.upscale(encode(noise(1, width)), f"scale=4&format={fmt}")
    check_error(response, {400, 413})


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_16bit_gray_to_lossy_format(app: InProcessApp, fmt: str) -> None:
    """Was a 500: Pillow 13 refused Image.fromarray(uint16, mode='I;16') in array_to_pil (fixed)."""
    values = np.random.default_rng(1).integers(0, 65536, (12, 10)).astype(np.uint16)
    check_image(app.upscale(png16(values), f"scale=2&format={fmt}"), (20, 24), fmt=fmt)


# --- content types and forms ---------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "application/x-www-form-urlencoded",
                                          "text/html; charset=utf-8"])
def test_wrong_content_type(app: InProcessApp, content_type: str) -> None:
    check_error(app.upscale(SMALL_PNG, content_type=content_type), {415})


@pytest.mark.parametrize("content_type", [None, "image/jpeg", "application/octet-stream", "IMAGE/PNG"])
def test_sniffed_content_type(app: InProcessApp, content_type: str | None) -> None:
    """The bytes decide the format: a missing or mislabelled image type still works."""
    check_image(app.upscale(SMALL_PNG, content_type=content_type), (32, 32))


def test_multipart_ok_with_fields(app: InProcessApp) -> None:
    body, ctype = multipart([("image", "a.png", "image/png", SMALL_PNG), ("scale", None, None, b"3")])
    check_image(app.upscale(body, content_type=ctype), (48, 48))


@pytest.mark.parametrize("case", ["no-image-field", "two-files", "image-as-text", "bad-field", "unknown-field",
                                  "no-closing-boundary", "no-boundary-param"])
def test_bad_multipart(app: InProcessApp, case: str) -> None:
    parts: list[tuple[str, str | None, str | None, bytes]] = {
        "no-image-field": [("file", "a.png", "image/png", SMALL_PNG)],
        "two-files": [("image", "a.png", "image/png", SMALL_PNG), ("image", "b.png", "image/png", SMALL_PNG)],
        "image-as-text": [("image", None, None, b"not a file")],
        "bad-field": [("image", "a.png", "image/png", SMALL_PNG), ("scale", None, None, b"abc")],
        "unknown-field": [("image", "a.png", "image/png", SMALL_PNG), ("colour", None, None, b"blue")],
    }.get(case, [("image", "a.png", "image/png", SMALL_PNG)])
    body, ctype = multipart(parts)
    if case == "no-closing-boundary":
        body = body[: body.rindex(b"--reliabilityBoundary7--")]
    if case == "no-boundary-param":
        ctype = "multipart/form-data"
    check_error(app.upscale(body, content_type=ctype), {400})


# --- oversized bodies -------------------------------------------------------------------------


def test_oversized_with_content_length(app: InProcessApp) -> None:
    response, elapsed = timed(app, b"\x00" * (MAX_UPLOAD + 1))
    problem = check_error(response, {413})
    assert "limit" in problem["detail"]


def test_oversized_chunked(app: InProcessApp) -> None:
    async def chunks() -> object:
        for _ in range(MAX_UPLOAD // 4096 + 8):
            yield b"\x00" * 4096

    response = app.upscale(chunks(), content_type="image/png")  # type: ignore[arg-type]
    assert "content-length" not in response.request.headers
    check_error(response, {413})


# --- absurd parameters ----------------------------------------------------------------------

ABSURD = ["scale=0", "scale=-1", "scale=nan", "scale=NaN", "scale=inf", "scale=-inf", "scale=1e9", "scale=0.9",
          "scale=1&content=clean", "scale=1e400", "scale=", "scale=two", "scale=0x10", "width=0", "width=-5",
          "width=99999", "height=0", "width=2.5", "width=1e3", "scale=2&width=64", "scale=2&height=64", "width=8",
          "width=16&height=16&content=clean", "width=1000", "model=x5", "model=", "format=tiff", "format=PNG",
          "fit=none&width=64&height=64", "quality=0", "quality=101", "quality=abc", "colour=blue", "scale=9",
          "width=99999999999999999999999999"]


@pytest.mark.parametrize("query", ABSURD)
def test_absurd_parameters(app: InProcessApp, query: str) -> None:
    check_error(app.upscale(SMALL_PNG, query), {400})


def test_absurd_parameter_is_named(app: InProcessApp) -> None:
    problem = check_error(app.upscale(SMALL_PNG, "scale=nan"), {400})
    assert "scale" in problem["detail"]


# --- after all that ------------------------------------------------------------------------


def test_zz_still_serving(app: InProcessApp) -> None:
    assert app.request("GET", "/healthz").json() == {"status": "ok"}
    assert app.request("GET", "/readyz").status_code == 200
    check_image(app.upscale(encode(noise(24, 24)), "scale=2"), (48, 48))


# --- the same through a real uvicorn process -------------------------------------------------

UPLOAD_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def server(weights_dir: Path, workdir: Path) -> Iterator[RealServer]:
    settings = {f"IMDN_{k.upper()}": str(v) for k, v in LIMITS.items()}
    with RealServer(weights_dir, workdir, IMDN_REQUEST_TIMEOUT_S=str(UPLOAD_TIMEOUT_S), IMDN_MODELS="x2,as",
                    **settings) as server:
        server.wait_ready()
        yield server


REAL_SUBSET = [
    ("empty", b"", "", "image/png", {415}),
    ("text", b"just text", "", "image/png", {415}),
    ("truncated-png", SMALL_PNG[: len(SMALL_PNG) // 2], "", "image/png", {415, 422}),
    ("truncated-jpeg", SMALL_JPEG[: len(SMALL_JPEG) * 9 // 10], "", "image/jpeg", {415, 422}),
    ("bomb", with_png_size(SMALL_PNG, 65535, 65535), "", "image/png", {413}),
    ("past-limit", encode(np.zeros((500, 500), np.uint8)), "", "image/png", {413}),
    ("zero-width", hand_png(0, 16), "", "image/png", {415, 422}),
    ("wrong-type", SMALL_PNG, "", "text/plain", {415}),
    ("scale-nan", SMALL_PNG, "scale=nan", "image/png", {400}),
    ("both", SMALL_PNG, "scale=2&width=40", "image/png", {400}),
    ("huge-width", SMALL_PNG, "width=99999", "image/png", {400}),
]


@pytest.mark.parametrize("name,data,query,content_type,allowed", REAL_SUBSET, ids=[c[0] for c in REAL_SUBSET])
def test_real_server_errors(server: RealServer, name: str, data: bytes, query: str, content_type: str,
                            allowed: set[int]) -> None:
    response = httpx.post(f"{server.url}/v1/superresolve?{query}", content=data,
                          headers={"content-type": content_type}, timeout=15)
    check_error(response, allowed)


@pytest.mark.parametrize("name,data,query,size", [
    ("1x1", encode(noise(1, 1)), "scale=2", (2, 2)),
    ("animated-gif", animated("GIF", [noise(16, 16, seed=s) for s in range(3)]), "scale=2", (32, 32)),
    ("cmyk", cmyk_jpeg(), "scale=2", (32, 32)),
    ("exif-6", jpeg_with_exif_orientation(noise(16, 24), 6), "scale=2", (32, 48)),
])
def test_real_server_images(server: RealServer, name: str, data: bytes, query: str, size: tuple[int, int]) -> None:
    response = httpx.post(f"{server.url}/v1/superresolve?{query}", content=data,
                          headers={"content-type": "application/octet-stream"}, timeout=15)
    check_image(response, size)


def test_real_multipart_missing_field(server: RealServer) -> None:
    body, ctype = multipart([("picture", "a.png", "image/png", SMALL_PNG)])
    response = httpx.post(f"{server.url}/v1/superresolve", content=body, headers={"content-type": ctype},
                          timeout=15)
    check_error(response, {400})


def request_head(length: int | None, content_type: str = "image/png") -> bytes:
    head = f"POST /v1/superresolve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (head + "Connection: close\r\n\r\n").encode()


def test_real_oversized_with_content_length(server: RealServer) -> None:
    """Refused from the header: the server answers 413 without waiting for the body."""
    started = time.perf_counter()
    status, headers, body = raw_http(server.port, request_head(MAX_UPLOAD * 8), [b"\x00" * 1024], delay=0.5)
    check_problem(status, headers.get("content-type", ""), body, {413})
    assert time.perf_counter() - started < UPLOAD_TIMEOUT_S


def test_real_oversized_chunked(server: RealServer) -> None:
    chunk = b"\x00" * 8192
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    parts = [framed] * (MAX_UPLOAD // len(chunk) + 16) + [b"0\r\n\r\n"]
    status, headers, body = raw_http(server.port, request_head(None), parts, delay=0.001)
    check_problem(status, headers.get("content-type", ""), body, {413})


def test_real_slow_upload(server: RealServer) -> None:
    """A client trickling its body slower than the upload timeout gets 408; others are served meanwhile."""
    result: dict[str, object] = {}

    def trickle() -> None:
        trickled = [bytes([b]) for b in SMALL_PNG[:40]]  # one byte every 0.25 s: ~10 s for 40 bytes
        started = time.perf_counter()
        try:
            result["response"] = raw_http(server.port, request_head(len(SMALL_PNG)), trickled, delay=0.25,
                                          timeout=UPLOAD_TIMEOUT_S + 12)
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc
        result["elapsed"] = time.perf_counter() - started

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    time.sleep(0.5)
    # While the slow client holds its connection, a normal request goes through.
    response = httpx.post(f"{server.url}/v1/superresolve?scale=2", content=SMALL_PNG,
                          headers={"content-type": "image/png"}, timeout=10)
    check_image(response, (32, 32))
    thread.join(UPLOAD_TIMEOUT_S + 15)
    assert not thread.is_alive(), "the slow upload never got an answer"
    assert "error" not in result, result.get("error")
    status, headers, body = result["response"]  # type: ignore[misc]
    problem = check_problem(status, headers.get("content-type", ""), body, {408})
    assert "did not arrive" in problem["detail"]
    elapsed = result["elapsed"]
    assert UPLOAD_TIMEOUT_S - 0.5 < elapsed < UPLOAD_TIMEOUT_S + 6, elapsed  # type: ignore[operator]


def test_real_zz_still_serving(server: RealServer) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    response = httpx.post(f"{server.url}/v1/superresolve?scale=2", content=encode(noise(24, 24)),
                          headers={"content-type": "image/png"}, timeout=15)
    check_image(response, (48, 48))
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "imdn_requests_in_flight 0.0" in metrics
    assert ' status="500"' not in metrics, [line for line in metrics.splitlines() if 'status="500"' in line]
    assert server.proc.poll() is None


def test_check_any_accepts_the_corpus_shapes(app: InProcessApp) -> None:
    """check_any (used by the fuzzers) agrees with the explicit checks on one image and one error."""
    check_any(app.upscale(SMALL_PNG, "scale=2"))
    check_any(app.upscale(b"nope"))
    assert json.loads(app.upscale(b"nope").content)["status"] == 415
