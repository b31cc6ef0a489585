"""Image I/O: decoding every common kind of upload, Picture <-> arrays, and the band-streaming PNG encoder."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from model.imageio import (
    PNG_SIGNATURE,
    ImageDecodeError,
    ImageTooLargeError,
    Picture,
    PNGStreamEncoder,
    UnsupportedImageError,
    array_to_pil,
    decode,
    encode_png_stream,
    encode_whole,
    picture_from_array,
    picture_from_pil,
    probe,
    to_array,
    unit_float,
)

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _pattern(height: int, width: int, channels: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:height, 0:width]
    smooth = ((x * 7 + y * 3) % 50) / 49 * top
    noisy = smooth[:, :, None] + rng.integers(-top // 20, top // 20 + 1, (height, width, channels))
    return np.clip(noisy, 0, top).astype(dtype)


def _encode(array: np.ndarray, band_heights: list[int], level: int = 6, icc: bytes | None = None) -> bytes:
    h, w, c = array.shape
    bits = 16 if array.dtype == np.uint16 else 8
    bands, top = [], 0
    for rows in band_heights:
        bands.append(array[top : top + rows])
        top += rows
    assert top == h
    return b"".join(encode_png_stream(bands, w, h, c, bits, level, icc))


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png.startswith(PNG_SIGNATURE)
    pos, chunks = len(PNG_SIGNATURE), []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, payload = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload), f"bad CRC in {kind!r}"
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def _reference_decode(png: bytes) -> np.ndarray:
    """A tiny independent PNG decoder (all five filters) -> (H,W,C) uint8/uint16, for layouts PIL reduces."""
    chunks = _chunks(png)
    width, height, bits, color_type = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[color_type]
    bpp = channels * bits // 8
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    stride = width * bpp
    previous = bytearray(stride)
    rows = []
    for r in range(height):
        line = raw[r * (stride + 1) : (r + 1) * (stride + 1)]
        kind, data = line[0], bytearray(line[1:])
        for i in range(stride):
            a = data[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                data[i] = (data[i] + a) & 0xFF
            elif kind == 2:
                data[i] = (data[i] + b) & 0xFF
            elif kind == 3:
                data[i] = (data[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                data[i] = (data[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(data))
        previous = data
    dtype = np.dtype(">u2") if bits == 16 else np.dtype(np.uint8)
    return np.frombuffer(b"".join(rows), dtype).reshape(height, width, channels).astype(dtype.newbyteorder("="))


# --- PNG streaming -------------------------------------------------------------------------


@pytest.mark.parametrize("level", [6, 1, 0])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_png_stream_round_trip_8bit(mode, level):
    array = _pattern(23, 17, len(mode))
    png = _encode(array, [1, 5, 2, 9, 6], level)
    with Image.open(io.BytesIO(png)) as img:
        assert img.mode == mode and img.size == (17, 23)
        decoded = np.asarray(img)
    assert np.array_equal(decoded.reshape(array.shape), array)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("level", [1, 0])
def test_png_stream_filters_large_bands_in_slices(monkeypatch, bits, level):
    """A band is filtered a slice of rows at a time (bounded temporaries); the result is the same PNG."""
    array = _pattern(30, 11, 3, np.uint16 if bits == 16 else np.uint8)
    whole = _encode(array, [30], level)
    monkeypatch.setattr("model.imageio.FILTER_SLICE_BYTES", 100)  # 1-2 rows per slice
    sliced = _encode(array, [13, 17], level)
    assert np.array_equal(_reference_decode(sliced), array)
    assert zlib.decompress(b"".join(p for k, p in _chunks(sliced) if k == b"IDAT")) == \
        zlib.decompress(b"".join(p for k, p in _chunks(whole) if k == b"IDAT"))


@pytest.mark.parametrize("level", [6, 0])
def test_png_stream_round_trip_16bit_gray(level):
    array = _pattern(19, 13, 1, np.uint16)
    assert array.max() > 255
    png = _encode(array, [7, 1, 11], level)
    with Image.open(io.BytesIO(png)) as img:
        assert img.mode in ("I;16", "I;16B", "I") and img.size == (13, 19)
        decoded = np.asarray(img).astype(np.int64)
    assert np.array_equal(decoded, array[:, :, 0].astype(np.int64))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png_stream_round_trip_16bit_colour_reference_decoder(channels):
    array = _pattern(9, 7, channels, np.uint16, seed=channels)
    png = _encode(array, [4, 1, 4])
    assert np.array_equal(_reference_decode(png), array)
    with Image.open(io.BytesIO(png)) as img:  # PIL opens it too (as 8-bit)
        img.load()
        assert img.size == (7, 9)


def test_png_stream_single_row_bands_and_one_pixel():
    array = _pattern(6, 1, 3)
    png = _encode(array, [1] * 6)
    with Image.open(io.BytesIO(png)) as img:
        assert np.array_equal(np.asarray(img), array)


def test_png_stream_chunk_order_and_pieces():
    array = _pattern(12, 8, 3)
    pieces = list(encode_png_stream([array[:5], array[5:]], 8, 12, 3))
    assert pieces[0].startswith(PNG_SIGNATURE)
    assert [k for k, _ in _chunks(pieces[0])] == [b"IHDR"]
    kinds = [k for k, _ in _chunks(b"".join(pieces))]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert set(kinds[1:-1]) == {b"IDAT"}
    width, height, bits, color_type = struct.unpack(">IIBB", _chunks(pieces[0])[0][1][:10])
    assert (width, height, bits, color_type) == (8, 12, 8, 2)


def test_png_stream_icc_profile_chunk():
    array = _pattern(8, 8, 3)
    png = _encode(array, [8], icc=SRGB_ICC)
    kinds = [k for k, _ in _chunks(png)]
    assert kinds.index(b"iCCP") == 1  # right after IHDR, before any IDAT
    with Image.open(io.BytesIO(png)) as img:
        assert img.info["icc_profile"] == SRGB_ICC
    assert b"iCCP" not in [k for k, _ in _chunks(_encode(array, [8]))]


def test_png_stream_encoder_rejects_bad_bands():
    encoder = PNGStreamEncoder(4, 3, 3)
    encoder.header()
    with pytest.raises(ValueError, match="does not fit"):
        encoder.add(np.zeros((1, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        encoder.add(np.zeros((1, 4, 4), np.uint8))
    encoder.add(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        encoder.add(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2 of 3 rows"):
        encoder.finish()


@pytest.mark.parametrize(("channels", "bits"), [(5, 8), (0, 8), (3, 12), (1, 1)])
def test_png_stream_encoder_unsupported_layout(channels, bits):
    with pytest.raises(ValueError, match="unsupported PNG layout"):
        PNGStreamEncoder(4, 4, channels, bits)


# --- decode ------------------------------------------------------------------------------------


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_decode_png_rgb():
    array = _pattern(10, 12, 3)
    picture = decode(_save(Image.fromarray(array), "PNG"))
    assert picture.size == (10, 12) and picture.mode == "RGB" and picture.frames == 1
    # 8-bit samples stay uint8 (a quarter of float32's memory); the engine converts what it reads
    assert picture.color.dtype == torch.uint8 and picture.color.shape == (3, 10, 12)
    assert torch.equal(unit_float(picture.color), torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    assert np.array_equal(to_array(picture.color, picture.alpha, picture.gray, picture.bits), array)


def test_decode_applies_exif_orientation():
    img = Image.fromarray(_pattern(10, 20, 3))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _save(img, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(io.BytesIO(data)) as raw:
        assert raw.size == (20, 10)
    picture = decode(data)
    assert picture.size == (20, 10)  # (height, width): width and height swapped


def test_decode_cmyk_jpeg_to_rgb():
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    picture = decode(_save(cmyk, "JPEG", quality=95))
    assert picture.mode == "RGB" and picture.alpha is None and not picture.gray
    assert picture.size == (8, 16)
    red, green, blue = (float(unit_float(picture.color)[i].mean()) for i in range(3))
    assert red > 0.8 and green < 0.2 and blue < 0.2


def test_decode_palette_with_transparency_gets_alpha():
    indices = np.zeros((6, 8), np.uint8)
    indices[:, 4:] = 1
    img = Image.fromarray(indices, mode="P")
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    picture = decode(_save(img, "PNG", transparency=0))
    assert picture.mode == "RGBA" and picture.alpha is not None
    assert torch.all(picture.alpha[:, :4] == 0) and torch.all(picture.alpha[:, 4:] == 255)
    assert torch.equal(picture.color[:, 0, 5], torch.tensor([200, 100, 50], dtype=torch.uint8))


def test_decode_palette_without_transparency_is_rgb():
    img = Image.fromarray(_pattern(6, 6, 3)).convert("P")
    assert decode(_save(img, "PNG")).mode == "RGB"


def test_decode_gray_and_gray_alpha():
    assert decode(_save(Image.fromarray(_pattern(5, 6, 1)[:, :, 0]), "PNG")).mode == "L"
    picture = decode(_save(Image.fromarray(_pattern(5, 6, 2), mode="LA"), "PNG"))
    assert picture.mode == "LA" and picture.gray and picture.channels == 2


def test_decode_sixteen_bit_gray_png():
    array = _pattern(7, 9, 1, np.uint16)
    png = _encode(array, [7])
    picture = decode(png)
    assert picture.bits == 16 and picture.gray and picture.mode == "I;16"
    assert np.array_equal(to_array(picture.color, None, True, 16), array)


def _png_with_filters(array: np.ndarray, icc: bytes | None = None) -> bytes:
    """A 16-bit PNG whose row r uses filter r % 5 (None, Sub, Up, Average, Paeth), written independently."""
    height, width, channels = array.shape
    raw = np.ascontiguousarray(array.astype(">u2")).view(np.uint8).reshape(height, -1).astype(np.int64)
    bpp = 2 * channels
    lines, previous = [], np.zeros(raw.shape[1], np.int64)
    for r, row in enumerate(raw):
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int64), previous[:-bpp]])
        p = left + previous - upper_left
        pa, pb, pc = np.abs(p - left), np.abs(p - previous), np.abs(p - upper_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, previous, upper_left))
        predictor = [0, left, previous, (left + previous) // 2, paeth][r % 5]
        lines.append(bytes([r % 5]) + ((row - predictor) & 0xFF).astype(np.uint8).tobytes())
        previous = row

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0))
    if icc:
        body += chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    return PNG_SIGNATURE + body + chunk(b"IDAT", zlib.compress(b"".join(lines))) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("channels", "mode"), [(2, "LA;16"), (3, "RGB;16"), (4, "RGBA;16")])
def test_decode_sixteen_bit_colour_png_all_filters(channels, mode):
    array = _pattern(11, 6, channels, np.uint16, seed=7)
    png = _png_with_filters(array)
    assert np.array_equal(_reference_decode(png), array)  # the test's writer is right
    picture = decode(png)
    assert picture.bits == 16 and picture.mode == mode and picture.size == (11, 6)
    assert np.array_equal(to_array(picture.color, picture.alpha, picture.gray, picture.bits), array)


def test_decode_sixteen_bit_colour_png_from_stream_encoder():
    array = _pattern(13, 10, 3, np.uint16, seed=8)
    picture = decode(_encode(array, [5, 8], icc=SRGB_ICC))
    assert picture.bits == 16 and picture.icc_profile == SRGB_ICC
    assert np.array_equal(to_array(picture.color, None, False, 16), array)


def test_decode_sixteen_bit_colour_png_truncated():
    png = _png_with_filters(_pattern(40, 40, 3, np.uint16, seed=9))
    with pytest.raises(ImageDecodeError):
        decode(png[: len(png) // 2])


def test_decode_keeps_icc_profile():
    data = _save(Image.fromarray(_pattern(6, 6, 3)), "PNG", icc_profile=SRGB_ICC)
    assert decode(data).icc_profile == SRGB_ICC


HTML_AS_ICC = b"<html><script>alert(document.domain)</script></html>"


@pytest.mark.parametrize("profile", [HTML_AS_ICC, SRGB_ICC[:128], b"\x00" * 600, SRGB_ICC[:-40]],
                         ids=["html", "header-only", "zeros", "cut-off"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_drops_a_profile_that_is_not_icc(profile: bytes, fmt: str, caplog: pytest.LogCaptureFixture):
    """Bytes that do not parse as ICC (LittleCMS) are dropped with a log line, so outputs never carry
    arbitrary upload bytes; a real profile in the same file format is kept (test above)."""
    data = _save(Image.fromarray(_pattern(6, 6, 3)), fmt, icc_profile=profile)
    with caplog.at_level("WARNING", logger="model.imageio"):
        picture = decode(data)
    assert picture.icc_profile is None
    assert any("ICC profile" in r.getMessage() and str(len(profile)) in r.getMessage() for r in caplog.records)
    assert decode(_save(Image.fromarray(_pattern(6, 6, 3)), fmt, icc_profile=SRGB_ICC)).icc_profile == SRGB_ICC


def test_decode_pixel_limit_before_decoding():
    """A 65535 x 65535 PNG header with a few bytes of data: refused from the header alone."""
    ihdr = struct.pack(">IIBBBBB", 65535, 65535, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    bomb = PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    assert len(bomb) < 200
    with pytest.raises(ImageTooLargeError, match="65535x65535"):
        decode(bomb, max_pixels=50_000_000)
    img, fmt = probe(bomb)
    assert fmt == "png" and img.size == (65535, 65535)


def test_decode_pixel_limit_allows_images_at_the_limit():
    data = _save(Image.fromarray(_pattern(10, 10, 3)), "PNG")
    assert decode(data, max_pixels=100).size == (10, 10)
    with pytest.raises(ImageTooLargeError):
        decode(data, max_pixels=99)


def test_decode_empty_bytes():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode(b"")


@pytest.mark.parametrize("data", [b"hello world, not an image", b"\x00" * 100, PNG_SIGNATURE + b"\x00" * 10])
def test_decode_garbage(data):
    with pytest.raises(ImageDecodeError):
        decode(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_decode_truncated(fmt):
    rng = np.random.default_rng(5)
    data = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode(data[: len(data) // 2])


def test_decode_animated_gif_first_frame():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (8, 6), c) for c in colours]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    picture = decode(data)
    assert picture.frames == 3
    assert picture.size == (6, 8)
    out = to_array(picture.color, picture.alpha, picture.gray, picture.bits)
    assert np.all(out[:, :, 0] == 255) and np.all(out[:, :, 1:] == 0)


def test_decode_webp_and_bmp():
    array = _pattern(9, 11, 3)
    assert decode(_save(Image.fromarray(array), "WEBP", lossless=True)).size == (9, 11)
    picture = decode(_save(Image.fromarray(array), "BMP"))
    assert np.array_equal(to_array(picture.color, None, False, 8), array)


def test_decode_errors_are_value_errors():
    assert issubclass(ImageDecodeError, ValueError)
    assert issubclass(UnsupportedImageError, ImageDecodeError)
    assert issubclass(ImageTooLargeError, ValueError)


# --- Picture <-> arrays ------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_picture_from_array_round_trip(channels, mode, dtype):
    array = _pattern(5, 7, channels, dtype)
    picture = picture_from_array(array)
    assert picture.channels == channels
    assert picture.bits == (16 if dtype == np.uint16 else 8)
    assert picture.mode == (mode if dtype == np.uint8 else ("I;16" if channels == 1 else mode + ";16"))
    assert picture.color.shape == (3, 5, 7)
    assert (picture.alpha is not None) == (channels in (2, 4))
    back = to_array(picture.color, picture.alpha, picture.gray, picture.bits)
    assert back.dtype == dtype and np.array_equal(back, array)


def test_picture_from_array_2d_and_float():
    gray = _pattern(4, 5, 1)[:, :, 0]
    assert picture_from_array(gray).mode == "L"
    floats = np.full((3, 3, 3), 0.5, np.float32)
    floats[0, 0] = 1.5  # clamped
    picture = picture_from_array(floats)
    assert picture.bits == 8 and float(picture.color.max()) == 1.0
    assert torch.allclose(picture.color[:, 1, 1], torch.full((3,), 0.5))


@pytest.mark.parametrize(("array", "error"), [
    (np.zeros((4, 4, 5), np.uint8), UnsupportedImageError),
    (np.zeros((4, 4, 3), np.int32), UnsupportedImageError),
    (np.zeros((4,), np.uint8), UnsupportedImageError),
    (np.zeros((0, 4, 3), np.uint8), ImageDecodeError),
])
def test_picture_from_array_rejects(array, error):
    with pytest.raises(error):
        picture_from_array(array)


def test_picture_from_pil_modes():
    rgb = Image.fromarray(_pattern(4, 4, 3))
    assert picture_from_pil(rgb.convert("1")).mode == "L"
    assert picture_from_pil(rgb.convert("YCbCr")).mode == "RGB"
    assert picture_from_pil(rgb.convert("RGBa")).mode == "RGBA"
    assert picture_from_pil(Image.new("F", (3, 2), 0.25)).mode == "L"
    assert picture_from_pil(Image.new("I", (3, 2), 1000)).bits == 16


def test_picture_from_pil_32bit_integer_rejected():
    with pytest.raises(UnsupportedImageError, match="32-bit"):
        picture_from_pil(Image.new("I", (3, 2), 70000))


def test_to_array_gray_is_channel_mean_and_clamps():
    color = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    assert np.all(to_array(color, None, True, 8) == 128)
    assert np.all(to_array(color * 3 - 1, None, False, 8)[0, 0] == [0, 128, 255])
    assert to_array(color, torch.ones(2, 2), False, 16)[0, 0].tolist() == [0, 32768, 65535, 65535]


# --- whole-image encoders --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_array_to_pil_8bit(mode):
    array = _pattern(4, 6, len(mode))
    img = array_to_pil(array, SRGB_ICC)
    assert img.mode == mode and img.size == (6, 4)
    assert np.array_equal(np.asarray(img).reshape(array.shape), array)
    assert img.info["icc_profile"] == SRGB_ICC


def test_array_to_pil_16bit_colour_reduced_to_8bit():
    array = np.array([[[0, 257, 65535], [32896, 65535, 0]]], np.uint16)
    img = array_to_pil(array)
    assert img.mode == "RGB"
    assert np.asarray(img).tolist() == [[[0, 1, 255], [128, 255, 0]]]


def test_array_to_pil_16bit_gray():
    array = _pattern(4, 6, 1, np.uint16)
    img = array_to_pil(array)
    assert img.mode == "I;16"
    assert np.array_equal(np.asarray(img).astype(np.int64), array[:, :, 0].astype(np.int64))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_encode_whole_8bit(fmt, channels):
    array = _pattern(10, 14, channels)
    data = encode_whole(array, fmt, quality=90, icc_profile=SRGB_ICC)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == fmt.upper() and img.size == (14, 10)
        if fmt == "jpeg":
            assert img.mode == ("L" if channels <= 2 else "RGB")  # JPEG drops alpha
        assert img.info.get("icc_profile") == SRGB_ICC


@pytest.mark.parametrize("channels", [2, 4])
def test_encode_whole_jpeg_flattens_alpha_onto_white(channels):
    array = np.zeros((8, 8, channels), np.uint8)  # black everywhere under the alpha
    array[:, :, -1] = [[0, 0, 128, 128, 255, 255, 255, 255]] * 8
    array[:, 6:, :-1] = 200  # opaque and light on the right
    out = np.asarray(Image.open(io.BytesIO(encode_whole(array, "jpeg", quality=100)))).astype(int)
    out = out if out.ndim == 2 else out.mean(axis=2)
    assert out[:, :2].min() >= 250  # transparent: white, not the black under it
    assert abs(out[:, 2:4].mean() - 128) <= 6  # half transparent black over white: mid grey
    assert out[:, 4:6].max() <= 12  # opaque black stays black


def test_encode_whole_16bit_gray():
    data = encode_whole(_pattern(6, 6, 1, np.uint16), "webp")
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (6, 6)


def test_picture_properties():
    picture = Picture(torch.zeros(3, 2, 5), torch.zeros(2, 5), gray=False, bits=16)
    assert picture.size == (2, 5) and picture.channels == 4 and picture.mode == "RGBA;16"


@pytest.mark.parametrize("level", [1, 2, 3])
def test_png_stream_fast_levels_use_isal_and_decode_anywhere(level):
    pytest.importorskip("isal")
    from isal import isal_zlib

    from model.imageio import deflate_compressor

    assert isinstance(deflate_compressor(level), type(isal_zlib.compressobj(1)))
    array = _pattern(37, 29, 3)
    png = _encode(array, [10, 27], level)
    raw = zlib.decompress(b"".join(p for k, p in _chunks(png) if k == b"IDAT"))  # a plain zlib stream
    assert len(raw) == 37 * (1 + 29 * 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), array)
