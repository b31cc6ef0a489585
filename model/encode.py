"""Encoders: PNG streamed band by band as rows arrive, and WebP/JPEG/AVIF from a whole image; each writes the
ICC profile and the metadata that model/metadata.py let through."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
from PIL import Image

from model.imageio import PNG_SIGNATURE
from model.metadata import Metadata, png_chunks, save_options
from model.picture import array_to_pil

try:  # ISA-L's deflate: zlib-format streams, several times faster than zlib (bench/encode.py)
    from isal import isal_zlib
except ImportError:  # pragma: no cover - a platform without its wheels falls back to zlib
    isal_zlib = None  # type: ignore[assignment]

# ISA-L's levels are 0-3: several times faster than zlib; output 1-10% larger on photos (Set14 HR).
ISAL_LEVELS = range(1, 4)

PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+alpha, RGB, RGBA)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _average_filter(rows: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """PNG filter 3 (Average): each byte minus the floor-mean of its left and upper neighbours.

    Encoding reads unfiltered neighbours only, so it vectorises; on upscaled photos it
    compresses within 2% of Paeth at a twentieth of the numpy cost (bench/encode.py).
    """
    x = rows.astype(np.int16)
    above = np.concatenate([previous[None].astype(np.int16), x[:-1]])
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    filtered = ((x - ((left + above) >> 1)) & 0xFF).astype(np.uint8)
    return np.concatenate([np.full((rows.shape[0], 1), 3, np.uint8), filtered], axis=1)


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


def deflate_backend(level: int, isal: bool = True) -> str:
    """Which deflate a PNG level uses: "ISA-L" for levels 1-3 when installed (and `isal`), else "zlib"
    (0 = stored)."""
    return "ISA-L" if isal and isal_zlib is not None and level in ISAL_LEVELS else "zlib"


def deflate_compressor(level: int, isal: bool = True) -> Compressor:
    """A zlib-format stream compressor for `level`, from the deflate that ``deflate_backend`` names."""
    if deflate_backend(level, isal) == "ISA-L":
        return isal_zlib.compressobj(level, isal_zlib.DEFLATED, 15, 9)
    return zlib.compressobj(level, zlib.DEFLATED, 15, 9)


FILTER_SLICE_BYTES = 2**20


class PNGStreamEncoder:
    """Encode a PNG band by band: header first, then IDAT data as rows arrive.

    ``header()`` then ``add(band)`` for each (rows, W, C) uint8/uint16 band top to
    bottom, then ``finish()``; each returns the bytes ready to send. Memory is one
    band, so the first bytes of a large image leave while later bands compute.
    """

    def __init__(self, width: int, height: int, channels: int, bits: int = 8, level: int = 6,
                 icc_profile: bytes | None = None, isal: bool = True, metadata: Metadata | None = None) -> None:
        if channels not in PNG_COLOR_TYPES or bits not in (8, 16):
            raise ValueError(f"unsupported PNG layout: {channels} channels, {bits} bits")
        self.width, self.height, self.channels, self.bits = width, height, channels, bits
        self.icc_profile, self.metadata = icc_profile, metadata
        self.bpp = channels * bits // 8
        self.rows_done = 0
        self.previous = np.zeros(width * self.bpp, np.uint8)
        # Filtering is what makes photos compress (bench/encode.py); level 0 means "no
        # compression", so it skips the filter too.
        self.filtered = level >= 1
        self.compressor = deflate_compressor(level, isal)

    def header(self) -> bytes:
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, self.bits, PNG_COLOR_TYPES[self.channels], 0, 0, 0)
        out = PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
        if self.icc_profile:
            out += _chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(self.icc_profile))
        for kind, payload in png_chunks(self.metadata) if self.metadata else ():
            out += _chunk(kind, payload)  # before the pixels: readers need not read to the end to find them
        return out

    def add(self, band: np.ndarray) -> bytes:
        rows, width, channels = band.shape
        if width != self.width or channels != self.channels or self.rows_done + rows > self.height:
            raise ValueError(f"band {band.shape} does not fit a {self.width}x{self.height}x{self.channels} PNG")
        raw = np.ascontiguousarray(band.astype(">u2") if self.bits == 16 else band).view(np.uint8)
        raw = raw.reshape(rows, width * self.bpp)
        # Filter ~1 MB of rows at a time: the filter's int16 temporaries are several times the
        # band's size (hundreds of MB for an 8000-pixel-wide band), a slice's are not.
        step = max(1, FILTER_SLICE_BYTES // raw.shape[1])
        data = []
        for top in range(0, rows, step):
            part = raw[top : top + step]
            if self.filtered:
                lines = _average_filter(part, self.previous, self.bpp)
            else:
                lines = np.concatenate([np.zeros((part.shape[0], 1), np.uint8), part], axis=1)
            self.previous = part[-1].copy()
            data.append(self.compressor.compress(lines.tobytes()))
        self.rows_done += rows
        compressed = b"".join(data)
        return _chunk(b"IDAT", compressed) if compressed else b""

    def keep_alive(self) -> bytes:
        """A few bytes that change nothing: an IDAT holding whatever is compressed so far, ended by an empty
        stored deflate block (a sync flush). Sent while the next band is still computing, it keeps idle-timing
        proxies from cutting the response; the image decodes the same, pixel for pixel. Only between the
        header and finish() (IDAT chunks must follow each other)."""
        return _chunk(b"IDAT", self.compressor.flush(zlib.Z_SYNC_FLUSH))

    def finish(self) -> bytes:
        if self.rows_done != self.height:
            raise ValueError(f"PNG has {self.rows_done} of {self.height} rows")
        return _chunk(b"IDAT", self.compressor.flush()) + _chunk(b"IEND", b"")


def encode_png_stream(bands: Iterable[np.ndarray], width: int, height: int, channels: int, bits: int = 8,
                      level: int = 6, icc_profile: bytes | None = None, isal: bool = True,
                      metadata: Metadata | None = None) -> Iterator[bytes]:
    """Bands top to bottom -> PNG bytes in pieces (header, IDAT per band, end). isal=False: zlib only."""
    encoder = PNGStreamEncoder(width, height, channels, bits, level, icc_profile, isal, metadata)
    yield encoder.header()
    for band in bands:
        chunk = encoder.add(band)
        if chunk:
            yield chunk
    yield encoder.finish()


# libaom's speed for AVIF: Pillow's default; 3 MP took 3.6 s at 6 (file as small as WebP's at the same
# quality), 0.8 s at 10 (+22 % bytes) on this project's 2-core machine.
AVIF_SPEED = 6


def encode_whole(array: np.ndarray, fmt: str, quality: int = 90, icc_profile: bytes | None = None,
                 metadata: Metadata | None = None) -> bytes:
    """(H,W,C) array -> WebP, JPEG or AVIF bytes (formats whose encoders need the whole image; 8 bits each)."""
    img = array_to_pil(array, icc_profile)
    if fmt == "jpeg" and img.mode in ("LA", "RGBA"):
        # JPEG has no alpha: composite onto white, as a page shows the transparent image (the service says so
        # in X-Alpha-Flattened); dropping the channel would bring back whatever colour hid under alpha 0.
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA")).convert("L" if img.mode == "LA" else "RGB")
    if img.mode == "I;16":
        img = Image.fromarray((np.asarray(img).astype(np.uint32) // 257).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    options: dict[str, object] = {"quality": quality, **(save_options(metadata, fmt) if metadata else {})}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if fmt == "avif":
        options["speed"] = AVIF_SPEED
    img.save(buffer, format=fmt.upper(), **options)
    return buffer.getvalue()
