"""Peak memory of writing an upscaled animation: what IMDN_MAX_ANIMATION_PIXELS bounds.

    python bench/animation_memory.py --frames 8 --side 1024

The service holds every upscaled frame (RGBA, 4 bytes a pixel) until Pillow's writer has them all, and the
writer makes its own copies. For each output format this runs ``encode_animation`` on photo-like frames in a
fresh process and reports the peak resident memory above the process's baseline, per output pixel: the
frames held, and the peak while writing. Multiply by the limit for the worst case of one request.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(fmt: str, count: int, side: int) -> tuple[float, float]:
    """(bytes a pixel held by the frames, bytes a pixel at the writer's peak), above the baseline."""
    import numpy as np
    from PIL import Image

    from model.animation import encode_animation

    def rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    base = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    start = rss()
    frames = [Image.fromarray(np.dstack([np.roll(base, 7 * i, axis=1), np.full((side, side), 255, np.uint8)]))
              for i in range(count)]
    held = rss()
    encode_animation(frames, [100] * count, 0, fmt, 90, 1)
    pixels = count * side * side
    return (held - start) / pixels, (rss() - start) / pixels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--side", type=int, default=1024, help="output frames are side x side")
    parser.add_argument("--one", choices=["png", "webp", "gif"], help=argparse.SUPPRESS)  # the child's run
    args = parser.parse_args(argv)
    if args.one:
        held, peak = measure(args.one, args.frames, args.side)
        print(f"{held:.1f} {peak:.1f}")
        return 0
    pixels = args.frames * args.side**2
    print(f"{args.frames} frames of {args.side}x{args.side} = {pixels / 1e6:.1f} MP; bytes per output pixel")
    print(f"{'format':<8} {'held':>6} {'peak':>6}")
    for fmt in ("png", "webp", "gif"):
        # A fresh process per format: ru_maxrss only grows.
        out = subprocess.run([sys.executable, __file__, "--one", fmt, "--frames", str(args.frames), "--side",
                              str(args.side)], check=True, capture_output=True, text=True).stdout.split()
        print(f"{fmt:<8} {float(out[0]):6.1f} {float(out[1]):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
