"""Image decoding: uploaded bytes -> ``Picture``, within pixel, scan and time limits checked before the
pixels are decoded (colour modes: model/picture.py; encoders: model/encode.py).

CMYK/YCCK JPEGs become RGB, 16-bit colour PNGs and 10/12-bit HEICs keep 16 bits, EXIF orientation is applied;
EXIF, XMP and IPTC are read into the picture's `metadata` (model/metadata.py decides what goes out).
"""

from __future__ import annotations

import io
import logging
import struct
import time
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model import bmp_rle
from model.heif import decode_heif_deep, largest_claim
from model.memory import ImageLayout, layout_from_mode
from model.metadata import read_metadata
from model.picture import (
    ImageDecodeError,
    ImageTooLargeError,
    Picture,
    UnsupportedImageError,
    picture_from_array,
    picture_from_pil,
)
from model.structure import gif_frames, jpeg_scans, tiff_frames

# File suffixes of still-image formats the project reads from folders (benchmarks, training, CLI).
IMAGE_SUFFIXES = frozenset({".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".heic", ".heif", ".avif"})

log = logging.getLogger("model.imageio")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Pillow's own bomb guard is replaced by the explicit pixel limit in decode().
Image.MAX_IMAGE_PIXELS = None
# Pillow's one Python decoder among the formats read here, BMP's RLE, was quadratic in a row's width.
bmp_rle.install()


INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
# ISO-BMFF brands of still HEIF and AVIF images and their sequences (ftyp's major or compatible brands).
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"})
# Progressive JPEGs decode scan by scan, each a pass over the whole image: encoders write about 10
# (libjpeg) to a few dozen (mozjpeg); a crafted file repeats one thousands of times (8-43 s of CPU).
MAX_JPEG_SCANS = 100


class DecodeCancelledError(Exception):
    """The caller no longer wants the picture (its request ended); raised from inside the decoder."""


class DecodeTimeoutError(ImageDecodeError):
    """Decoding ran past its deadline (decode's `timeout_s`): the file costs more than it may (422)."""


def with_deadline(check: Callable[[], None] | None, timeout_s: float | None) -> Callable[[], None] | None:
    """`check`, then DecodeTimeoutError once `timeout_s` have passed from now (None: `check` alone)."""
    if timeout_s is None:
        return check
    deadline = time.monotonic() + timeout_s

    def checked() -> None:
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise DecodeTimeoutError(f"the image did not decode within {timeout_s:g} s (IMDN_DECODE_TIMEOUT_S): "
                                     "its decoding costs more than this service allows")

    return checked


class _CheckedBytesIO(io.BytesIO):
    """The upload as a file whose every read first asks `check` whether to go on: Pillow's decoders read
    in blocks of at most 64 KB, so a decode is abandoned within a block of its request ending."""

    def __init__(self, data: bytes, check: Callable[[], None] | None) -> None:
        super().__init__(data)
        self.check = check

    def read(self, size: int | None = -1, /) -> bytes:
        if self.check is not None:
            self.check()
        return super().read(size)


def is_heif_family(data: bytes) -> bool:
    """Whether the bytes start as a HEIF or AVIF file (an ftyp box naming one of their brands)."""
    if data[4:8] != b"ftyp":
        return False
    (size,) = struct.unpack(">I", data[:4])
    brands = data[8:min(size, 256)]
    return any(brands[i : i + 4] in HEIF_BRANDS for i in range(0, len(brands) - 3, 4))


def probe(data: bytes, check: Callable[[], None] | None = None) -> tuple[Image.Image, str]:
    """Open the image header without decoding pixels -> (lazy image, format name)."""
    if not data:
        raise UnsupportedImageError("the request body is empty: no image was sent")
    try:
        img = Image.open(_CheckedBytesIO(data, check), formats=INPUT_FORMATS)
    except UnidentifiedImageError as exc:
        if is_heif_family(data):  # libheif and libavif refuse a damaged file as a foreign one
            raise ImageDecodeError("the HEIF/AVIF file is truncated or corrupt: its boxes cannot be read") from exc
        raise UnsupportedImageError("not a recognised image format: send a PNG, JPEG, WebP, GIF, BMP, TIFF, HEIC "
                                    "or AVIF") from exc
    except DecodeCancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read a known format's header is damage
        if check is not None:
            check()  # the request's end (or deadline) first, if that is what stopped the reading
        # Pillow knew the format but could not read its header: a damaged file, not a foreign one.
        raise ImageDecodeError(f"the image header is truncated or corrupt ({exc})") from exc
    return img, (img.format or "unknown").lower()


def count_frames(img: Image.Image, fmt: str, data: bytes, max_frames: int | None = None) -> int:
    """How many frames (pages, IFDs) the file has, counting no further than one past `max_frames`;
    more than `max_frames` raises ImageDecodeError (422). None: no limit (the walks are linear in the file's
    size: the CLI's own files); the service passes IMDN_MAX_FRAMES."""
    stop_after = max_frames if max_frames is not None else len(data)
    try:
        if fmt == "gif":
            frames = gif_frames(data, stop_after)
        elif fmt == "tiff":
            frames = tiff_frames(data, stop_after)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frames = int(getattr(img, "n_frames", 1) or 1)
    except Exception as exc:  # noqa: BLE001 - a count the file cannot give is damage
        raise ImageDecodeError(f"the {fmt} image's frames cannot be counted ({type(exc).__name__}: {exc})") from exc
    if max_frames is not None and frames > max_frames:
        raise ImageDecodeError(f"the {fmt} image has more than {max_frames} frames (IMDN_MAX_FRAMES); only the "
                               "first would be used: send it as a still image")
    return frames


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")


def open_checked(data: bytes, max_pixels: int | None = None, max_jpeg_scans: int | None = MAX_JPEG_SCANS,
                 check: Callable[[], None] | None = None, max_frames: int | None = None) -> \
        tuple[Image.Image, str, int]:
    """probe() plus every limit that the header and the file's structure can decide before any pixel
    is decoded: a size, the pixel limit, the scan limit of progressive JPEGs, the frame limit.
    -> (lazy image, format name, frames)."""
    claim = largest_claim(data)  # before libheif or libavif, whose own limits would refuse a huge one as damage
    if claim is not None:
        _check_pixels(*claim, max_pixels)
    img, fmt = probe(data, check)
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image header says {width}x{height}: no pixels")
    _check_pixels(width, height, max_pixels)
    if fmt in ("jpeg", "mpo") and max_jpeg_scans is not None:
        scans = jpeg_scans(data, max_jpeg_scans)
        if scans > max_jpeg_scans:
            raise ImageDecodeError(f"the JPEG has more than {max_jpeg_scans} scans (a decoding cost bomb; "
                                   "ordinary progressive JPEGs have about 10)")
    return img, fmt, count_frames(img, fmt, data, max_frames)


def header_size(data: bytes, max_pixels: int | None = None, max_jpeg_scans: int | None = MAX_JPEG_SCANS,
                max_frames: int | None = None) -> tuple[int, int]:
    """(height, width) as the picture will be seen (EXIF orientation applied), from the header alone;
    raises what decode() would raise for the limits. A PNG whose eXIf chunk follows its pixels is
    measured unrotated (reading that chunk means decoding)."""
    layout = header_layout(data, max_pixels, max_jpeg_scans, max_frames)
    return layout.height, layout.width


def header_layout(data: bytes, max_pixels: int | None = None, max_jpeg_scans: int | None = MAX_JPEG_SCANS,
                  max_frames: int | None = None) -> ImageLayout:
    """header_size's size with the samples the picture will have (channels, bits): what its memory is
    estimated from (model/memory.py) before anything is decoded."""
    img, fmt, _ = open_checked(data, max_pixels, max_jpeg_scans, max_frames=max_frames)
    return layout_of(img, fmt, data)


def layout_of(img: Image.Image, fmt: str, data: bytes) -> ImageLayout:
    """The layout of an image open_checked() has opened from `data` (see header_layout)."""
    width, height = img.size
    sixteen = fmt == "png" and len(data) > 24 and data[24] == 16  # IHDR's bit depth; Pillow shows 8-bit modes
    exif_in_header = fmt != "png" or "exif" in img.info
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1) if exif_in_header else 1
    except Exception:  # noqa: BLE001 - unreadable EXIF: decode() reports the damage, if it matters
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return layout_from_mode(height, width, img.mode, "transparency" in img.info, sixteen)


# Pillow reads 16-bit colour PNGs at 8 bits per channel, but its C inflate-and-unfilter can hand over either
# byte of each sample (raw modes ;16B and ;16L): two passes give all 16 bits at C speed. Gray+alpha
# (4 bytes a pixel) is unfiltered exactly as 8-bit RGBA is, so one pass reads it byte for byte.
PNG16_PASSES = {2: ("RGB", ("RGB;16B", "RGB;16L")), 4: ("RGBA", ("RGBA",)), 6: ("RGBA", ("RGBA;16B", "RGBA;16L"))}


def _decode_png16_color(data: bytes) -> tuple[np.ndarray, bytes | None] | None:
    """(H,W,C) uint16 and the eXIf chunk for a non-interlaced 16-bit colour or gray+alpha PNG, else None.

    Pillow reduces these to 8 bits per channel; this keeps all 16.
    """
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33:
        return None
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 16 or color_type not in PNG16_PASSES or interlace:
        return None
    idat, pos, exif = [], 8, None
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"eXIf":  # read here: Pillow's getexif() would decode the whole image to find it
            exif = data[pos + 8 : pos + 8 + length]
        elif kind == b"IEND":
            break
        pos += 12 + length
    stream = b"".join(idat)
    mode, rawmodes = PNG16_PASSES[color_type]
    try:
        # The decoder inflates only as much as the image needs: an inflate bomb costs nothing more.
        passes = [np.asarray(Image.frombytes(mode, (width, height), stream, "zip", rawmode))
                  for rawmode in rawmodes]
    except ValueError as exc:
        raise ImageDecodeError(f"the png image is truncated or corrupt ({exc})") from exc
    if len(passes) == 1:  # gray+alpha read as RGBA: the bytes of G and A, big-endian
        return passes[0].view(">u2").reshape(height, width, 2).astype(np.uint16), exif
    high, low = passes
    return (high.astype(np.uint16) << 8) | low, exif


EXIF_ORIENTATION = 0x0112


def oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """(H,W,C) as stored -> as it should be seen, for EXIF orientation 1-8 (what ImageOps.exif_transpose does)."""
    turns = {1: (False, 0), 2: (True, 0), 3: (False, 2), 4: (True, 2), 5: (True, 1), 6: (False, 3),
             7: (True, 3), 8: (False, 1)}
    mirror, quarter_turns = turns.get(orientation, (False, 0))
    if mirror:
        array = array[:, ::-1]
    return np.ascontiguousarray(np.rot90(array, quarter_turns))


def _with_metadata(picture: Picture, img: Image.Image, frames: int) -> Picture:
    picture.metadata, picture.frames = read_metadata(img), frames
    return picture


def decode(data: bytes, max_pixels: int | None = None, max_jpeg_scans: int | None = MAX_JPEG_SCANS,
           check: Callable[[], None] | None = None, max_frames: int | None = None,
           timeout_s: float | None = None) -> Picture:
    """Encoded image bytes -> Picture (first frame of an animation, EXIF orientation applied).

    Raises ImageTooLargeError before decoding if width*height > max_pixels (bombs cost nothing),
    ImageDecodeError for anything unreadable: every decoding and colour-conversion step is inside
    that mapping. `check` is called before each block the decoder reads; whatever it raises
    (the request ended) stops the decode. More than `max_frames` frames: ImageDecodeError, before decoding.
    Past `timeout_s` seconds: DecodeTimeoutError (an ImageDecodeError), at the next block read.
    """
    check = with_deadline(check, timeout_s)
    img, fmt, frames = open_checked(data, max_pixels, max_jpeg_scans, check, max_frames)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sixteen = _decode_png16_color(data) if fmt == "png" else None
            if sixteen is not None:
                array, exif = sixteen
                if exif is not None:
                    img.info["exif"] = exif
                    orientation = Image.Exif()
                    orientation.load(exif)
                    array = oriented(array, orientation.get(EXIF_ORIENTATION, 1))
                picture = picture_from_array(array, img.info.get("icc_profile"))
                if check is not None:
                    check()  # the conversion to float planes counts: it is the decode's cost too
                return _with_metadata(picture, img, frames)
            if fmt == "heif" and int(img.info.get("bit_depth") or 8) > 8:  # libheif applies the orientation
                picture = picture_from_array(decode_heif_deep(data), img.info.get("icc_profile"))
                if check is not None:
                    check()
                return _with_metadata(picture, img, frames)
            img.seek(0)
            _check_pixels(*img.size, max_pixels)  # a GIF frame larger than its screen grows the canvas
            img.load()
            if check is not None:
                check()  # a decoder that read all it needed at once (BMP RLE) is timed here
            metadata = read_metadata(img)  # as the file holds it, before the orientation is applied
            icc = img.info.get("icc_profile")
            img = ImageOps.exif_transpose(img) or img
            if icc and not img.info.get("icc_profile"):
                img.info["icc_profile"] = icc
            picture = picture_from_pil(img)
            picture.metadata = metadata
            if check is not None:
                check()  # the conversion to float planes counts: it is the decode's cost too
    except (ImageDecodeError, ImageTooLargeError, DecodeCancelledError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a decoder or a conversion raises, the file is at fault
        if check is not None:
            check()  # a decoder may wrap the check's exception in its own: the request's end comes first
        raise ImageDecodeError(f"the {fmt} image is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    picture.frames = frames
    return picture
