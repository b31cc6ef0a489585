"""Metadata from an upload to its output: read per input format, filtered per policy, rewritten for the new
pixels, bounded, and written by each encoder so that a reader (Pillow) finds it again."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, IptcImagePlugin
from PIL.PngImagePlugin import PngInfo

from model.encode import encode_png_stream, encode_whole
from model.imageio import decode, header_size
from model.metadata import (
    MAX_BLOCK_BYTES,
    Metadata,
    metadata_for_output,
    read_metadata,
)
from model.picture import to_array
from tests.samples import PHOTO_IPTC, PHOTO_XMP, avif, heic, photo_exif, photo_jpeg, smooth_image

MAKE, ORIENTATION, EXIF_IFD, GPS_IFD, PIXEL_X, PIXEL_Y = 0x010F, 0x0112, 0x8769, 0x8825, 0xA002, 0xA003


def encoded(fmt: str, array: np.ndarray, meta: Metadata) -> Image.Image:
    """The array written as `fmt` with `meta`, read back by Pillow."""
    if fmt == "png":
        data = b"".join(encode_png_stream([array], array.shape[1], array.shape[0], array.shape[2], 8, 1,
                                          metadata=meta))
    else:
        data = encode_whole(array, fmt, 80, None, meta)
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_jpeg_blocks_are_read() -> None:
    picture = decode(photo_jpeg())
    assert picture.size == (24, 16)  # orientation 6 applied
    meta = picture.metadata
    assert meta is not None and meta.blocks == ["exif", "xmp", "iptc"]
    assert meta.xmp == PHOTO_XMP and meta.iptc == PHOTO_IPTC and not meta.dropped


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "avif"])
def test_keep_writes_every_block_the_format_holds(fmt: str) -> None:
    picture = decode(photo_jpeg())
    meta = metadata_for_output(picture.metadata, "keep", 32, 48, fmt)
    img = encoded(fmt, smooth_image(48, 32), meta)
    exif = img.getexif()
    assert exif[MAKE] == "TestCam" and exif[ORIENTATION] == 1  # the pixels are upright now
    sub = exif.get_ifd(EXIF_IFD)
    assert (sub[PIXEL_X], sub[PIXEL_Y]) == (32, 48)  # the output's size, not the camera's
    assert exif.get_ifd(GPS_IFD)[1] == "N"
    xmp = img.info["xmp"]
    assert b'tiff:Orientation="1"' in xmp and b'exif:PixelXDimension="32"' in xmp
    assert b"<exif:PixelYDimension>48</exif:PixelYDimension>" in xmp and b"GPSLatitude" in xmp
    if fmt == "jpeg":
        assert IptcImagePlugin.getiptcinfo(img)[(2, 116)] == b"(c) A. Person"
        assert not meta.dropped
    else:
        assert meta.dropped == [f"iptc ({fmt.upper()} has no place for it)"]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "avif"])
def test_nogps_keeps_all_but_location(fmt: str) -> None:
    meta = metadata_for_output(decode(photo_jpeg()).metadata, "nogps", 32, 48, fmt)
    img = encoded(fmt, smooth_image(48, 32), meta)
    exif = img.getexif()
    assert exif[MAKE] == "TestCam" and not exif.get_ifd(GPS_IFD)
    assert b"GPS" not in img.info["xmp"] and b"A. Photographer" in img.info["xmp"]


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "avif"])
def test_strip_writes_none(fmt: str) -> None:
    meta = metadata_for_output(decode(photo_jpeg()).metadata, "strip", 32, 48, fmt)
    assert meta.blocks == []
    img = encoded(fmt, smooth_image(48, 32), meta)
    assert not img.getexif() and "xmp" not in img.info and IptcImagePlugin.getiptcinfo(img) is None


def test_blocks_are_read_from_every_format_that_holds_them() -> None:
    image = smooth_image(16, 24)
    exif, xmp = photo_exif(), PHOTO_XMP
    files = {"heic": heic(image, exif=exif, xmp=xmp), "avif": avif(image, exif=exif, xmp=xmp)}
    text = PngInfo()
    text.add_itxt("XML:com.adobe.xmp", xmp.decode())
    tiff_tags = Image.Exif()  # a TIFF's EXIF is its own first directory, XMP and IPTC are tags beside it
    tiff_tags.load(exif)
    tiff_tags[700], tiff_tags[33723] = xmp, PHOTO_IPTC
    for fmt, options in (("PNG", {"pnginfo": text}), ("WEBP", {"xmp": xmp}), ("TIFF", {"exif": tiff_tags})):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, fmt, **{"exif": exif, **options})
        files[fmt.lower()] = buffer.getvalue()
    for fmt, data in files.items():
        meta = decode(data).metadata
        assert meta is not None
        written = Image.Exif()
        written.load(meta.exif)
        assert written[MAKE] == "TestCam", fmt
        assert written.get_ifd(GPS_IFD)[1] == "N", fmt
        # (pillow-heif moves tiff:Orientation out of the XMP it writes)
        assert meta.xmp is not None and b"<dc:creator>A. Photographer</dc:creator>" in meta.xmp, fmt
        assert meta.iptc == (PHOTO_IPTC if fmt == "tiff" else None)


def test_orientation_from_heic_and_avif_is_applied_once() -> None:
    image = smooth_image(16, 24)
    for data in (heic(image, exif=photo_exif(6)), avif(image, exif=photo_exif(6))):
        picture = decode(data)
        assert picture.size == header_size(data) == (24, 16)  # turned once: not twice, not left as stored
        out = metadata_for_output(picture.metadata, "keep", 16, 24, "png")
        written = Image.Exif()
        written.load(out.exif)
        assert written.get(ORIENTATION, 1) == 1


def test_a_huge_block_is_dropped_and_said() -> None:
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(8, 8)).save(buffer, "PNG", exif=photo_exif(padding=10 * 2**20))
    picture = decode(buffer.getvalue())
    assert picture.metadata is not None and picture.metadata.exif is None
    [note] = picture.metadata.dropped
    assert note.startswith("exif (10,4") and note.endswith(f"bytes; the limit is {MAX_BLOCK_BYTES:,})"), note
    out = metadata_for_output(picture.metadata, "keep", 16, 16, "png")
    assert out.exif is None and out.dropped == picture.metadata.dropped


def test_a_damaged_exif_block_is_dropped_not_fatal() -> None:
    for junk in (b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\x00" * 20, b"Exif\x00\x00not a tiff at all"):
        out = metadata_for_output(Metadata(exif=junk, xmp=PHOTO_XMP), "keep", 10, 10, "png")
        assert out.xmp and out.exif is None
        assert len(out.dropped) == 1 and out.dropped[0].startswith("exif (unreadable"), out.dropped


def test_reading_never_raises_on_odd_info() -> None:
    img = Image.new("RGB", (4, 4))
    img.info.update(exif=12345, xmp=("not", "bytes"), photoshop="junk")
    assert read_metadata(img).blocks == []


def test_no_metadata_writes_nothing() -> None:
    array = smooth_image(8, 8)
    meta = metadata_for_output(None, "keep", 8, 8, "png")
    data = b"".join(encode_png_stream([array], 8, 8, 3, 8, 1, metadata=meta))
    assert b"eXIf" not in data and b"iTXt" not in data
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), to_array(
        decode(data).color, None, False, 8))


def test_a_hostile_xmp_costs_linear_time() -> None:
    """64 KB of unclosed GPS elements or attributes: a lazy match to each closing tag took 6 s (quadratic)."""
    import time

    for packet in (b"<exif:GPSa>" * 5800, b"<exif:GPSa " * 5800, b' exif:GPSa="' * 5000):
        started = time.perf_counter()
        metadata_for_output(Metadata(xmp=packet[:MAX_BLOCK_BYTES]), "nogps", 8, 8, "png")
        assert time.perf_counter() - started < 1.0  # ~0.02 s; generous for a shared machine


def test_webp_exif_chunk_holds_the_bare_tiff_structure() -> None:
    meta = metadata_for_output(decode(photo_jpeg()).metadata, "keep", 32, 48, "webp")
    data = encode_whole(smooth_image(48, 32), "webp", 80, None, meta)
    at = data.find(b"EXIF")
    assert at > 0 and data[at + 8 : at + 12] in (b"II*\x00", b"MM\x00*")
