"""Encoders: the band-streaming PNG encoder (every layout, slices, ISA-L) and whole-image WebP/JPEG."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model.encode import PNGStreamEncoder, deflate_compressor, encode_png_stream, encode_whole
from model.imageio import PNG_SIGNATURE
from tests.model.png_support import SRGB_ICC, chunks, encode, pattern, reference_decode


@pytest.mark.parametrize("level", [6, 1, 0])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_png_stream_round_trip_8bit(mode, level):
    array = pattern(23, 17, len(mode))
    png = encode(array, [1, 5, 2, 9, 6], level)
    with Image.open(io.BytesIO(png)) as img:
        assert img.mode == mode and img.size == (17, 23)
        decoded = np.asarray(img)
    assert np.array_equal(decoded.reshape(array.shape), array)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("level", [1, 0])
def test_png_stream_filters_large_bands_in_slices(monkeypatch, bits, level):
    """A band is filtered a slice of rows at a time (bounded temporaries); the result is the same PNG."""
    array = pattern(30, 11, 3, np.uint16 if bits == 16 else np.uint8)
    whole = encode(array, [30], level)
    monkeypatch.setattr("model.encode.FILTER_SLICE_BYTES", 100)  # 1-2 rows per slice
    sliced = encode(array, [13, 17], level)
    assert np.array_equal(reference_decode(sliced), array)
    assert zlib.decompress(b"".join(p for k, p in chunks(sliced) if k == b"IDAT")) == \
        zlib.decompress(b"".join(p for k, p in chunks(whole) if k == b"IDAT"))


@pytest.mark.parametrize("level", [6, 0])
def test_png_stream_round_trip_16bit_gray(level):
    array = pattern(19, 13, 1, np.uint16)
    assert array.max() > 255
    png = encode(array, [7, 1, 11], level)
    with Image.open(io.BytesIO(png)) as img:
        assert img.mode in ("I;16", "I;16B", "I") and img.size == (13, 19)
        decoded = np.asarray(img).astype(np.int64)
    assert np.array_equal(decoded, array[:, :, 0].astype(np.int64))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png_stream_round_trip_16bit_colour_reference_decoder(channels):
    array = pattern(9, 7, channels, np.uint16, seed=channels)
    png = encode(array, [4, 1, 4])
    assert np.array_equal(reference_decode(png), array)
    with Image.open(io.BytesIO(png)) as img:  # PIL opens it too (as 8-bit)
        img.load()
        assert img.size == (7, 9)


def test_png_stream_single_row_bands_and_one_pixel():
    array = pattern(6, 1, 3)
    png = encode(array, [1] * 6)
    with Image.open(io.BytesIO(png)) as img:
        assert np.array_equal(np.asarray(img), array)


def test_png_stream_chunk_order_and_pieces():
    array = pattern(12, 8, 3)
    pieces = list(encode_png_stream([array[:5], array[5:]], 8, 12, 3))
    assert pieces[0].startswith(PNG_SIGNATURE)
    assert [k for k, _ in chunks(pieces[0])] == [b"IHDR"]
    kinds = [k for k, _ in chunks(b"".join(pieces))]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert set(kinds[1:-1]) == {b"IDAT"}
    width, height, bits, color_type = struct.unpack(">IIBB", chunks(pieces[0])[0][1][:10])
    assert (width, height, bits, color_type) == (8, 12, 8, 2)


def test_png_stream_icc_profile_chunk():
    array = pattern(8, 8, 3)
    png = encode(array, [8], icc=SRGB_ICC)
    kinds = [k for k, _ in chunks(png)]
    assert kinds.index(b"iCCP") == 1  # right after IHDR, before any IDAT
    with Image.open(io.BytesIO(png)) as img:
        assert img.info["icc_profile"] == SRGB_ICC
    assert b"iCCP" not in [k for k, _ in chunks(encode(array, [8]))]


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

@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_encode_whole_8bit(fmt, channels):
    array = pattern(10, 14, channels)
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
    data = encode_whole(pattern(6, 6, 1, np.uint16), "webp")
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (6, 6)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_png_stream_fast_levels_use_isal_and_decode_anywhere(level):
    pytest.importorskip("isal")
    from isal import isal_zlib

    assert isinstance(deflate_compressor(level), type(isal_zlib.compressobj(1)))
    array = pattern(37, 29, 3)
    png = encode(array, [10, 27], level)
    raw = zlib.decompress(b"".join(p for k, p in chunks(png) if k == b"IDAT"))  # a plain zlib stream
    assert len(raw) == 37 * (1 + 29 * 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), array)


@pytest.mark.parametrize("level", [0, 1, 6])
def test_keep_alives_anywhere_between_header_and_end_change_no_pixel(level):
    """Keep-alive IDATs before the first band, between bands and in a row: the same image, decoded by Pillow and by
    an independent decoder, and every keep-alive is a whole, valid chunk."""
    array = pattern(23, 17, 3)
    plain = encode(array, [9, 14], level)
    encoder = PNGStreamEncoder(17, 23, 3, 8, level)
    pieces = [encoder.header(), encoder.keep_alive(), encoder.keep_alive(), encoder.add(array[:9]),
              encoder.keep_alive(), encoder.add(array[9:]), encoder.keep_alive(), encoder.finish()]
    alive = b"".join(pieces)
    for png in (plain, alive):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), array)
        assert np.array_equal(reference_decode(png), array)
    length, kind = struct.unpack(">I4s", pieces[1][:8])
    assert kind == b"IDAT" and len(pieces[1]) == 12 + length < 32
    assert len(alive) - len(plain) < 4 * 40  # a few bytes each
