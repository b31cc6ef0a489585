"""Decode cost of crafted inputs next to an ordinary photo-sized decode, in one run.

    python bench/decode_cost.py            # prints seconds per decode and the ratio to the baseline

Cases (all built here): a 1000x1000 16-bit RGB PNG, every row Paeth-filtered (about 8 KB: what cost ~15 s
when 16-bit PNGs were unfiltered in Python); a progressive JPEG whose last scan repeats 2000 times
(refused from its structure now); a baseline 1000x1000 8-bit PNG of noise.
"""

from __future__ import annotations

import io
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.imageio import PNG_SIGNATURE, decode  # noqa: E402
from model.picture import ImageDecodeError  # noqa: E402


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def paeth_png16(side: int) -> bytes:
    rows = (b"\x04" + b"\x00" * (side * 6)) * side
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def jpeg_scan_bomb(side: int, repeats: int) -> bytes:
    buffer = io.BytesIO()
    y, x = np.mgrid[0:side, 0:side]
    pixels = np.stack([x * 255 // side, y * 255 // side, (x + y) * 127 // side], axis=2).astype(np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, progressive=True)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:last] + data[last:-2] * repeats + b"\xff\xd9"


def timed(data: bytes, runs: int = 3) -> tuple[float, str]:
    best, outcome = float("inf"), ""
    for _ in range(runs):
        started = time.perf_counter()
        try:
            picture = decode(data, 16_800_000)
            outcome = f"{picture.size[1]}x{picture.size[0]}, {picture.bits}-bit"
        except ImageDecodeError as exc:
            outcome = f"refused: {str(exc)[:60]}"
        best = min(best, time.perf_counter() - started)
    return best, outcome


def main() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG", compress_level=1)
    cases = {
        "baseline: 1000x1000 8-bit PNG of noise": buffer.getvalue(),
        "1000x1000 16-bit RGB PNG, Paeth rows": paeth_png16(1000),
        "progressive JPEG 128x128, last scan x2000": jpeg_scan_bomb(128, 2000),
    }
    base = None
    for name, data in cases.items():
        seconds, outcome = timed(data, 1 if "x2000" in name else 3)
        base = base or seconds
        print(f"{name:45s} {len(data) / 1024:8.1f} KB {seconds * 1000:9.1f} ms {seconds / base:7.2f}x  {outcome}")


if __name__ == "__main__":
    main()
