"""Image decoding: every common kind of upload, and Picture <-> arrays."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from model.imageio import PNG_SIGNATURE, decode, header_size, probe
from model.picture import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    to_array,
    unit_float,
)
from model.structure import gif_frames, tiff_frames
from tests.model.png_support import SRGB_ICC, encode, pattern, reference_decode
from tests.samples import many_frame_gif, many_ifd_tiff


def _save(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_decode_png_rgb():
    array = pattern(10, 12, 3)
    picture = decode(_save(Image.fromarray(array), "PNG"))
    assert picture.size == (10, 12) and picture.mode == "RGB" and picture.frames == 1
    # 8-bit samples stay uint8 (a quarter of float32's memory); the engine converts what it reads
    assert picture.color.dtype == torch.uint8 and picture.color.shape == (3, 10, 12)
    assert torch.equal(unit_float(picture.color), torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    assert np.array_equal(to_array(picture.color, picture.alpha, picture.gray, picture.bits), array)


def test_decode_applies_exif_orientation():
    img = Image.fromarray(pattern(10, 20, 3))  # 20 wide, 10 high
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
    img = Image.fromarray(pattern(6, 6, 3)).convert("P")
    assert decode(_save(img, "PNG")).mode == "RGB"


def test_decode_gray_and_gray_alpha():
    assert decode(_save(Image.fromarray(pattern(5, 6, 1)[:, :, 0]), "PNG")).mode == "L"
    picture = decode(_save(Image.fromarray(pattern(5, 6, 2), mode="LA"), "PNG"))
    assert picture.mode == "LA" and picture.gray and picture.channels == 2


def test_decode_sixteen_bit_gray_png():
    array = pattern(7, 9, 1, np.uint16)
    png = encode(array, [7])
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
    array = pattern(11, 6, channels, np.uint16, seed=7)
    png = _png_with_filters(array)
    assert np.array_equal(reference_decode(png), array)  # the test's writer is right
    picture = decode(png)
    assert picture.bits == 16 and picture.mode == mode and picture.size == (11, 6)
    assert np.array_equal(to_array(picture.color, picture.alpha, picture.gray, picture.bits), array)


def test_decode_sixteen_bit_colour_png_from_stream_encoder():
    array = pattern(13, 10, 3, np.uint16, seed=8)
    picture = decode(encode(array, [5, 8], icc=SRGB_ICC))
    assert picture.bits == 16 and picture.icc_profile == SRGB_ICC
    assert np.array_equal(to_array(picture.color, None, False, 16), array)


def test_decode_sixteen_bit_colour_png_truncated():
    png = _png_with_filters(pattern(40, 40, 3, np.uint16, seed=9))
    with pytest.raises(ImageDecodeError):
        decode(png[: len(png) // 2])


def test_decode_keeps_icc_profile():
    data = _save(Image.fromarray(pattern(6, 6, 3)), "PNG", icc_profile=SRGB_ICC)
    assert decode(data).icc_profile == SRGB_ICC


HTML_AS_ICC = b"<html><script>alert(document.domain)</script></html>"


@pytest.mark.parametrize("profile", [HTML_AS_ICC, SRGB_ICC[:128], b"\x00" * 600, SRGB_ICC[:-40]],
                         ids=["html", "header-only", "zeros", "cut-off"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_drops_a_profile_that_is_not_icc(profile: bytes, fmt: str, caplog: pytest.LogCaptureFixture):
    """Bytes that do not parse as ICC (LittleCMS) are dropped with a log line, so outputs never carry
    arbitrary upload bytes; a real profile in the same file format is kept (test above)."""
    data = _save(Image.fromarray(pattern(6, 6, 3)), fmt, icc_profile=profile)
    with caplog.at_level("WARNING", logger="model.imageio"):
        picture = decode(data)
    assert picture.icc_profile is None
    assert any("ICC profile" in r.getMessage() and str(len(profile)) in r.getMessage() for r in caplog.records)
    assert decode(_save(Image.fromarray(pattern(6, 6, 3)), fmt, icc_profile=SRGB_ICC)).icc_profile == SRGB_ICC


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
    data = _save(Image.fromarray(pattern(10, 10, 3)), "PNG")
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


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
@pytest.mark.parametrize("count", [1, 2, 7])
def test_frames_counted_as_pillow_counts_them(fmt, count):
    """The structural counts agree with Pillow's n_frames on the files Pillow writes (GIF: a comment and a
    loop extension too; TIFF: compressed, and BigTIFF)."""
    rng = np.random.default_rng(count)
    frames = [Image.fromarray(rng.integers(0, 256, (9, 17, 3), dtype=np.uint8)) for _ in range(count)]
    variants = [{"comment": b"hi", "loop": 0, "duration": 40}] if fmt == "GIF" else \
        [{}, {"compression": "tiff_lzw"}, {"big_tiff": True}]
    for options in variants:
        data = _save(frames[0], fmt, save_all=True, append_images=frames[1:], **options)
        counted = (gif_frames if fmt == "GIF" else tiff_frames)(data, 1000)
        assert counted == Image.open(io.BytesIO(data)).n_frames == decode(data).frames == count, options


@pytest.mark.parametrize("make", [many_ifd_tiff, many_frame_gif])
def test_frame_limit(make):
    """More frames than max_frames: 422 (ImageDecodeError) from the header checks, counting stops past the
    limit; at the limit the picture decodes and reports its frames."""
    data = make(50)
    assert decode(data, max_frames=50).frames == 50
    for check in (lambda: header_size(data, max_frames=49), lambda: decode(data, max_frames=49)):
        with pytest.raises(ImageDecodeError, match="more than 49 frames"):
            check()
    counter = tiff_frames if make is many_ifd_tiff else gif_frames
    assert counter(make(5000), 10) == 11  # stops one past the limit


def test_frame_count_survives_loops_and_damage():
    """A TIFF whose IFD chain loops back counts each IFD once (as Pillow does); cut files count what is there."""
    data = bytearray(many_ifd_tiff(3))
    last_next = len(data) - 4
    data[last_next:] = struct.pack("<I", 9)  # the last IFD points back to the first
    assert tiff_frames(bytes(data), 1000) == 3
    assert tiff_frames(many_ifd_tiff(40)[:2000], 1000) <= 40
    assert gif_frames(many_frame_gif(40)[:300], 1000) <= 40
    assert tiff_frames(b"II*\x00", 1000) == gif_frames(b"GIF89a", 1000) == 1


def test_decode_webp_and_bmp():
    array = pattern(9, 11, 3)
    assert decode(_save(Image.fromarray(array), "WEBP", lossless=True)).size == (9, 11)
    picture = decode(_save(Image.fromarray(array), "BMP"))
    assert np.array_equal(to_array(picture.color, None, False, 8), array)


def test_decode_errors_are_value_errors():
    assert issubclass(ImageDecodeError, ValueError)
    assert issubclass(UnsupportedImageError, ImageDecodeError)
    assert issubclass(ImageTooLargeError, ValueError)


# --- Picture <-> arrays ------------------------------------------------------------------------
