"""PNG helpers shared by the decoder's and the encoders' tests: patterns, a chunk reader, a reference decoder."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import ImageCms

from model.encode import encode_png_stream
from model.imageio import PNG_SIGNATURE

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def pattern(height: int, width: int, channels: int, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:height, 0:width]
    smooth = ((x * 7 + y * 3) % 50) / 49 * top
    noisy = smooth[:, :, None] + rng.integers(-top // 20, top // 20 + 1, (height, width, channels))
    return np.clip(noisy, 0, top).astype(dtype)


def encode(array: np.ndarray, band_heights: list[int], level: int = 6, icc: bytes | None = None) -> bytes:
    h, w, c = array.shape
    bits = 16 if array.dtype == np.uint16 else 8
    bands, top = [], 0
    for rows in band_heights:
        bands.append(array[top : top + rows])
        top += rows
    assert top == h
    return b"".join(encode_png_stream(bands, w, h, c, bits, level, icc))


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
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


def reference_decode(png: bytes) -> np.ndarray:
    """A tiny independent PNG decoder (all five filters) -> (H,W,C) uint8/uint16, for layouts PIL reduces."""
    found = chunks(png)
    width, height, bits, color_type = struct.unpack(">IIBB", found[0][1][:10])
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[color_type]
    bpp = channels * bits // 8
    raw = zlib.decompress(b"".join(p for k, p in found if k == b"IDAT"))
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


