"""PNG encoding speed and size: Pillow's whole-image encoder vs the band-streaming encoder.

    python bench/encode.py                 # a 2048x2048 upscaled-photo-like RGB image
    python bench/encode.py --image out.png # any real image

Prints seconds, MB and MB/s of raw pixels per encoder setting, median of --rounds.
The service streams with model/encode.PNGStreamEncoder (IMDN_PNG_COMPRESS_LEVEL);
level 0 writes stored, unfiltered rows; 1-9 Average-filtered rows, deflated by ISA-L at
levels 1-3 (when python-isal is installed) and by zlib above.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service import test_image  # noqa: E402
from model.encode import deflate_backend, encode_png_stream  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="encode this image instead of a synthetic one")
    parser.add_argument("--side", type=int, default=1024, help="synthetic input side (upscaled x2 by bicubic)")
    parser.add_argument("--band", type=int, default=256, help="rows per streamed band")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.image:
        pixels = np.asarray(Image.open(args.image).convert("RGB"))
    else:  # an upscaled image is smooth at the pixel level, like the service's output
        small = Image.open(io.BytesIO(test_image(args.side)))
        pixels = np.asarray(small.resize((2 * args.side, 2 * args.side), Image.Resampling.BICUBIC))
    h, w, c = pixels.shape
    raw_mb = pixels.nbytes / 1e6
    print(f"{w}x{h} RGB, {raw_mb:.1f} MB raw, bands of {args.band} rows, median of {args.rounds}")
    print(f"{'encoder':<34} {'seconds':>8} {'MB out':>7} {'MB/s raw':>9}")

    def pillow(level: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG", compress_level=level)
        return buffer.getvalue()

    def stream(level: int, use_isal: bool) -> bytes:
        bands = (pixels[y : y + args.band] for y in range(0, h, args.band))
        return b"".join(encode_png_stream(bands, w, h, c, 8, level, isal=use_isal))

    cases: list[tuple[str, Callable[[], bytes]]] = [
        (f"Pillow compress_level={lv}", partial(pillow, lv)) for lv in (0, 1, 6, 9)]
    cases.append(("stream level=0 (unfiltered, stored)", partial(stream, 0, True)))
    for level, use_isal in ((1, False), (1, True), (2, True), (3, True), (6, True), (9, True)):
        deflate = deflate_backend(level, use_isal)
        cases.append((f"stream level={level} (Average, {deflate})", partial(stream, level, use_isal)))
    for label, fn in cases:
        times, size = [], 0
        for _ in range(args.rounds):
            start = time.perf_counter()
            size = len(fn())
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        print(f"{label:<34} {seconds:8.3f} {size / 1e6:7.2f} {raw_mb / seconds:9.1f}")


if __name__ == "__main__":
    main()
