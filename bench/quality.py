"""Quality at every scale: PSNR-Y of the upscaler vs plain bicubic, shrinking each HR image by s and back.

    python bench/quality.py --data ../shared/data/benchmarks/Set14
    python bench/quality.py --weights official:../shared/reference/official-imdn --scales 2 3 4

For each s, every HR image (cropped to a multiple of 4) is shrunk to round(side/s)
with MATLAB bicubic, then brought back to the HR size by the engine (target
width/height, so non-integer scales take the any-scale path) and by bicubic.
Border shaved: ceil(s) pixels.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED, models_for  # noqa: E402
from model.backends import TorchRunner  # noqa: E402
from model.engine import Upscaler  # noqa: E402
from model.evaluate import IMAGE_SUFFIXES, read_uint8  # noqa: E402
from model.imageio import picture_from_array, to_array  # noqa: E402
from model.metrics import psnr  # noqa: E402
from model.resize import imresize  # noqa: E402

SCALES = (1.5, 2, 2.5, 3, 3.3, 4, 5, 6, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data/benchmarks/Set14", help="a set folder with HR/")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    upscaler = Upscaler(TorchRunner(models_for(args.weights, ["x2", "x3", "x4", "as"])))
    hr_paths = sorted(p for p in (args.data / "HR").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    print(f"{args.data.name}, weights {args.weights}: PSNR-Y (dB) of the upscaler and of bicubic, "
          f"shrink by s then back")
    print(f"{'scale':>6} {'models':>8} {'upscaler':>9} {'bicubic':>8} {'gain':>6} {'seconds':>8}")
    for s in args.scales:
        ours, bicubic, models = [], [], ""
        start = time.perf_counter()
        for path in hr_paths:
            hr = read_uint8(path).expand(3, -1, -1)
            hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4].contiguous()
            h, w = hr.shape[1:]
            small = imresize(hr, size=(round(h / s), round(w / s)))
            picture = picture_from_array(small.permute(1, 2, 0).numpy())
            plan = upscaler.plan(picture.size, width=w, height=h)
            models = "+".join(plan.models)
            sr = torch.from_numpy(upscaler.upscale_picture(picture, plan)).permute(2, 0, 1)
            back = to_array(imresize(small.float() / 255, size=(h, w)), None, False, 8)
            crop = math.ceil(s)
            ours.append(psnr(sr, hr, crop))
            bicubic.append(psnr(torch.from_numpy(back).permute(2, 0, 1), hr, crop))
        a, b = statistics.mean(ours), statistics.mean(bicubic)
        print(f"{s:6g} {models:>8} {a:9.2f} {b:8.2f} {a - b:+6.2f} {time.perf_counter() - start:8.1f}")


if __name__ == "__main__":
    main()
