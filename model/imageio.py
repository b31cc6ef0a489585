"""Image decoding: bytes or PIL images <-> ``Picture`` tensors (encoders: model/encode.py).

All colour-mode handling lives here, apart from the network: RGB and L run
through the network (L as three equal channels), alpha is carried beside the
colour and resized with bicubic, palettes become RGB(A), CMYK/YCCK JPEGs become
RGB, 16-bit images are processed in float and come back as 16-bit. EXIF
orientation is applied on decode; the ICC profile is carried to the output if it
parses as ICC (LittleCMS), and other metadata is dropped.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# File suffixes of still-image formats the project reads from folders (benchmarks, training, CLI).
IMAGE_SUFFIXES = frozenset({".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"})

log = logging.getLogger("model.imageio")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Pillow's own bomb guard is replaced by the explicit pixel limit in decode().
Image.MAX_IMAGE_PIXELS = None


class ImageDecodeError(ValueError):
    """The bytes are not an image this service can read (unknown format, truncated, corrupt)."""


class UnsupportedImageError(ImageDecodeError):
    """Not an image format this service reads (or nothing at all), or a pixel layout it does not support."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than allowed; raised before its pixels are decoded."""


@dataclass
class Picture:
    """An image ready for the network.

    color: (3,H,W) samples; alpha: (H,W) samples or None. Samples are uint8 for
    8-bit images (a quarter of float32's memory: a 16 MP photo holds 48 MB, not
    192 MB; ``unit_float`` converts the windows the network reads), float32 in
    [0,1] otherwise. gray: came in as one channel and goes out as one; bits: 8
    or 16 per channel of the output.
    """

    color: torch.Tensor
    alpha: torch.Tensor | None = None
    gray: bool = False
    bits: int = 8
    icc_profile: bytes | None = None
    frames: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.color.shape[1]), int(self.color.shape[2])

    @property
    def channels(self) -> int:
        """Channels of the output image: 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)."""
        return (1 if self.gray else 3) + (self.alpha is not None)

    @property
    def mode(self) -> str:
        if self.bits == 16:
            return "I;16" if self.channels == 1 else {2: "LA", 3: "RGB", 4: "RGBA"}[self.channels] + ";16"
        return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[self.channels]


def unit_float(samples: torch.Tensor) -> torch.Tensor:
    """Picture samples (uint8, or float in [0,1]) -> float32 in [0,1]."""
    return samples.float().div_(255) if samples.dtype == torch.uint8 else samples


def valid_icc(profile: bytes | None) -> bytes | None:
    """The profile if LittleCMS parses it as ICC, else None (logged): outputs only carry real profiles,
    never arbitrary upload bytes (an 'ICC profile' of <html><script>... copied into a JPEG)."""
    if not profile:
        return None
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(profile))
        # LittleCMS reads tags lazily: a cut-off profile opens; its header says how long it should be.
        declared = struct.unpack(">I", profile[:4])[0]
        if declared != len(profile):
            raise ValueError(f"the header says {declared} bytes")
    except (OSError, ValueError, TypeError) as exc:
        log.warning("dropped an embedded ICC profile that does not parse as ICC (%d bytes: %s)", len(profile), exc)
        return None
    return profile


def picture_from_array(array: np.ndarray, icc_profile: bytes | None = None) -> Picture:
    """(H,W), (H,W,1..4) uint8/uint16 (or float in [0,1]) -> Picture. Channels: L, LA, RGB, RGBA.

    An ICC profile is kept only if it parses as one."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise UnsupportedImageError(f"expected an (H,W[,C]) array with 1-4 channels, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageDecodeError(f"image has no pixels ({array.shape[1]}x{array.shape[0]})")
    if array.dtype == np.uint8:
        with warnings.catch_warnings():  # PIL's arrays are read-only; nothing writes into Picture samples
            warnings.simplefilter("ignore", UserWarning)
            bits, values = 8, torch.from_numpy(np.ascontiguousarray(array))
    elif array.dtype == np.uint16:
        bits, values = 16, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        bits, values = 8, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).clamp_(0, 1)
    else:
        raise UnsupportedImageError(f"unsupported pixel type {array.dtype}; use uint8, uint16 or float")
    gray = array.shape[2] in (1, 2)
    has_alpha = array.shape[2] in (2, 4)
    color = values[:, :, :1].expand(-1, -1, 3) if gray else values[:, :, :3]
    alpha = values[:, :, -1].contiguous() if has_alpha else None
    return Picture(color.permute(2, 0, 1).contiguous(), alpha, gray, bits, valid_icc(icc_profile))


def _sixteen_bit_array(img: Image.Image) -> np.ndarray | None:
    """16-bit grayscale PNGs open as mode I/I;16; return their uint16 samples, else None."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(img)
        if img.mode == "I" and data.max(initial=0) > 65535:
            raise UnsupportedImageError("32-bit integer images are not supported")
        return data.astype(np.uint16)
    return None


def with_color_key(array: np.ndarray, key: object) -> np.ndarray:
    """Gray or RGB (H,W[,C]) + a tRNS colour key -> the same with an alpha channel (0 where the key matches)."""
    planes = array[:, :, None] if array.ndim == 2 else array
    values = key if isinstance(key, tuple) else (key,)
    top = np.iinfo(planes.dtype).max
    if len(values) != planes.shape[2]:
        return array  # a key that does not fit the layout: ignore it, as decoders do
    if not all(isinstance(v, int) and 0 <= v <= top for v in values):
        raise ImageDecodeError(f"the PNG's tRNS transparency key {values} does not fit its "
                               f"{planes.dtype.itemsize * 8}-bit samples")
    key_values = np.asarray(values, dtype=planes.dtype)
    alpha = np.where((planes == key_values).all(axis=2), 0, top).astype(planes.dtype)
    return np.concatenate([planes, alpha[:, :, None]], axis=2)


def picture_from_pil(img: Image.Image) -> Picture:
    """PIL image (any common mode) -> Picture; the ICC profile is kept."""
    icc = img.info.get("icc_profile") or None
    key = img.info.get("transparency")  # PNG tRNS colour key for gray/RGB images
    sixteen = _sixteen_bit_array(img)
    if sixteen is not None:
        return picture_from_array(sixteen if key is None else with_color_key(sixteen, key), icc)
    if img.mode in ("L", "RGB") and key is not None and not isinstance(key, bytes):
        return picture_from_array(with_color_key(np.asarray(img), key), icc)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
        icc = None  # a CMYK profile does not describe the RGB result
    elif img.mode in ("1", "L"):
        img = img.convert("L")
    elif img.mode in ("LA", "La", "PA"):
        img = img.convert("LA")
    elif img.mode in ("RGBA", "RGBa"):
        img = img.convert("RGBA")
    elif img.mode == "F":
        return picture_from_array(np.clip(np.asarray(img), 0, 1), icc)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return picture_from_array(np.asarray(img), icc)


# The documented input formats (Pillow's names); every other plugin stays unreachable. Cameras' JPEGs
# with several pictures open as MPO (a JPEG).
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# Progressive JPEGs decode scan by scan, each a pass over the whole image: encoders write about 10
# (libjpeg) to a few dozen (mozjpeg); a crafted file repeats one thousands of times (8-43 s of CPU).
MAX_JPEG_SCANS = 100


class DecodeCancelledError(Exception):
    """The caller no longer wants the picture (its request ended); raised from inside the decoder."""


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


def probe(data: bytes, check: Callable[[], None] | None = None) -> tuple[Image.Image, str]:
    """Open the image header without decoding pixels -> (lazy image, format name)."""
    if not data:
        raise UnsupportedImageError("the request body is empty: no image was sent")
    try:
        img = Image.open(_CheckedBytesIO(data, check), formats=INPUT_FORMATS)
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError("not a recognised image format: send a PNG, JPEG, WebP, GIF, BMP or TIFF") from exc
    except DecodeCancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read a known format's header is damage
        if check is not None:
            check()  # the request's end (or deadline) first, if that is what stopped the reading
        # Pillow knew the format but could not read its header: a damaged file, not a foreign one.
        raise ImageDecodeError(f"the image header is truncated or corrupt ({exc})") from exc
    return img, (img.format or "unknown").lower()


def jpeg_scans(data: bytes, stop_after: int) -> int:
    """Count a JPEG's scans (SOS markers) from its bytes, without decoding; stops counting past `stop_after`."""
    pos, scans = 2, 0
    while pos + 4 <= len(data) and scans <= stop_after:
        if data[pos] != 0xFF:
            break  # not a marker where one must be: leave the damage to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xD8):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next real marker
            scans += 1
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


# In entropy-coded data, 0xFF is followed by 0x00 (stuffing), 0xFF (fill) or a restart marker; anything
# else is the next segment.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")


def open_checked(data: bytes, max_pixels: int | None = None, max_jpeg_scans: int | None = MAX_JPEG_SCANS,
                 check: Callable[[], None] | None = None) -> tuple[Image.Image, str]:
    """probe() plus every limit that the header and the file's structure can decide before any pixel
    is decoded: a size, the pixel limit, the scan limit of progressive JPEGs."""
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
    return img, fmt


def header_size(data: bytes, max_pixels: int | None = None, max_jpeg_scans: int | None = MAX_JPEG_SCANS) -> \
        tuple[int, int]:
    """(height, width) as the picture will be seen (EXIF orientation applied), from the header alone;
    raises what decode() would raise for the limits. A PNG whose eXIf chunk follows its pixels is
    measured unrotated (reading that chunk means decoding)."""
    img, fmt = open_checked(data, max_pixels, max_jpeg_scans)
    width, height = img.size
    exif_in_header = fmt != "png" or "exif" in img.info
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1) if exif_in_header else 1
    except Exception:  # noqa: BLE001 - unreadable EXIF: decode() reports the damage, if it matters
        orientation = 1
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


# Pillow reads 16-bit colour PNGs at 8 bits per channel, but its C inflate-and-unfilter can hand over either
# byte of each sample (raw modes ;16B and ;16L): two passes give all 16 bits at C speed. Gray+alpha
# (4 bytes a pixel) is unfiltered exactly as 8-bit RGBA is, so one pass reads it byte for byte.
PNG16_PASSES = {2: ("RGB", ("RGB;16B", "RGB;16L")), 4: ("RGBA", ("RGBA",)), 6: ("RGBA", ("RGBA;16B", "RGBA;16L"))}


def _decode_png16_color(data: bytes) -> tuple[np.ndarray, int] | None:
    """(H,W,C) uint16 and the EXIF orientation for a non-interlaced 16-bit colour or gray+alpha PNG, else None.

    Pillow reduces these to 8 bits per channel; this keeps all 16.
    """
    if not data.startswith(PNG_SIGNATURE) or len(data) < 33:
        return None
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 16 or color_type not in PNG16_PASSES or interlace:
        return None
    idat, pos, orientation = [], 8, 1
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        elif kind == b"eXIf":  # read here: Pillow's getexif() would decode the whole image to find it
            exif = Image.Exif()
            exif.load(data[pos + 8 : pos + 8 + length])
            orientation = exif.get(EXIF_ORIENTATION, 1)
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
        return passes[0].view(">u2").reshape(height, width, 2).astype(np.uint16), orientation
    high, low = passes
    return (high.astype(np.uint16) << 8) | low, orientation


EXIF_ORIENTATION = 0x0112


def oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """(H,W,C) as stored -> as it should be seen, for EXIF orientation 1-8 (what ImageOps.exif_transpose does)."""
    turns = {1: (False, 0), 2: (True, 0), 3: (False, 2), 4: (True, 2), 5: (True, 1), 6: (False, 3),
             7: (True, 3), 8: (False, 1)}
    mirror, quarter_turns = turns.get(orientation, (False, 0))
    if mirror:
        array = array[:, ::-1]
    return np.ascontiguousarray(np.rot90(array, quarter_turns))


def decode(data: bytes, max_pixels: int | None = None, max_jpeg_scans: int | None = MAX_JPEG_SCANS,
           check: Callable[[], None] | None = None) -> Picture:
    """Encoded image bytes -> Picture (first frame of an animation, EXIF orientation applied).

    Raises ImageTooLargeError before decoding if width*height > max_pixels (bombs cost nothing),
    ImageDecodeError for anything unreadable: every decoding and colour-conversion step is inside
    that mapping. `check` is called before each block the decoder reads; whatever it raises
    (the request ended) stops the decode.
    """
    img, fmt = open_checked(data, max_pixels, max_jpeg_scans, check)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = int(getattr(img, "n_frames", 1) or 1)  # seeks through every frame: may hit the damage
            sixteen = _decode_png16_color(data) if fmt == "png" else None
            if sixteen is not None:
                picture = picture_from_array(oriented(*sixteen), img.info.get("icc_profile"))
                picture.frames = frames
                return picture
            img.seek(0)
            _check_pixels(*img.size, max_pixels)  # a GIF frame larger than its screen grows the canvas
            img.load()
            icc = img.info.get("icc_profile")
            img = ImageOps.exif_transpose(img) or img
            if icc and not img.info.get("icc_profile"):
                img.info["icc_profile"] = icc
            picture = picture_from_pil(img)
    except (ImageDecodeError, ImageTooLargeError, DecodeCancelledError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a decoder or a conversion raises, the file is at fault
        if check is not None:
            check()  # a decoder may wrap the check's exception in its own: the request's end comes first
        raise ImageDecodeError(f"the {fmt} image is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    picture.frames = frames
    return picture


def to_array(color: torch.Tensor, alpha: torch.Tensor | None, gray: bool, bits: int) -> np.ndarray:
    """color (3,h,w), alpha (h,w) or None, as float or Picture samples -> (h,w,C) uint8/uint16, C = 1..4."""
    color = unit_float(color)
    planes = [color.mean(dim=0, keepdim=True)] if gray else [color]
    if alpha is not None:
        planes.append(unit_float(alpha)[None])
    # cat makes a new tensor, so the scaling can be in place (a large band is tens of MB).
    stacked = torch.cat(planes).clamp_(0, 1).mul_(65535 if bits == 16 else 255).round_().permute(1, 2, 0)
    if bits == 16:
        return stacked.to(torch.int32).numpy().astype(np.uint16)
    return stacked.to(torch.uint8).numpy()


def array_to_pil(array: np.ndarray, icc_profile: bytes | None = None) -> Image.Image:
    """(H,W,C) uint8/uint16 from to_array -> PIL image (16-bit colour is reduced to 8-bit, a PIL limit)."""
    channels = array.shape[2]
    if array.dtype == np.uint16:
        if channels == 1:
            img = Image.fromarray(array[:, :, 0].astype(np.uint16))  # uint16 -> mode I;16
        else:
            array = (array.astype(np.uint32) * 255 + 32767) // 65535
            return array_to_pil(array.astype(np.uint8), icc_profile)
    else:
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        img = Image.fromarray(array[:, :, 0] if channels == 1 else array, mode=mode)
    if icc_profile:
        img.info["icc_profile"] = icc_profile
    return img
