"""Quality at every scale: PSNR-Y of the upscaler vs plain bicubic, shrinking each image by s and back.

    python bench/quality.py --data ../shared/data/benchmarks/Set14
    python bench/quality.py --weights official:../shared/reference/official-imdn --scales 2 3 4
    python bench/quality.py --data ../shared/data/realsr-sample --scales 1.5 2 2.5 3 3.3 4

For each s, every source image (cropped to a multiple of 4) is shrunk to
round(side/s) with MATLAB bicubic, then brought back to the HR size by the engine
(target width/height) with each policy of `auto` for non-integer scales ("as":
bicubic + IMDN_AS; "downscale": next integer IMDN, then bicubic down), with
`model=as` at every scale, and by plain bicubic. Border shaved: ceil(s) pixels.

Clean sets (HR/ only) shrink the HR image: the input is a clean bicubic
downscale. Real-pair sets (HR/ and LR_same_size/, RealSR layout) shrink the
camera's own low-resolution shot instead, and score against the camera's
high-resolution shot: the input then carries real lens blur and sensor noise,
as users' photos do.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED, models_for  # noqa: E402
from model.backends import TorchRunner  # noqa: E402
from model.engine import Upscaler  # noqa: E402
from model.evaluate import REAL_PAIR_LR, read_uint8  # noqa: E402
from model.imageio import IMAGE_SUFFIXES  # noqa: E402
from model.metrics import psnr  # noqa: E402
from model.picture import picture_from_array, to_array  # noqa: E402
from model.plan import ANY_SCALE_METHODS  # noqa: E402
from model.resize import imresize  # noqa: E402

SCALES = (1.5, 2, 2.5, 3, 3.3, 4, 5, 6, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data/benchmarks/Set14",
                        help="a set folder with HR/ (clean), or HR/ and LR_same_size/ (real camera pairs)")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runner = TorchRunner(models_for(args.weights, ["x2", "x3", "x4", "as"]))
    # max_scale 9: shrinking by 8 rounds sides down, so bringing them back can ask for a bit over 8x
    methods = {f"auto/{m}": (Upscaler(runner, max_scale=9, any_scale=m, content="clean", refine_stats=True), "auto")
               for m in ANY_SCALE_METHODS}
    methods["model=as"] = (methods["auto/as"][0], "as")
    hr_paths = sorted(p for p in (args.data / "HR").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    real = (args.data / REAL_PAIR_LR).is_dir()
    print(f"{args.data.name} ({'camera LR' if real else 'clean HR'} shrunk by s, then back), weights "
          f"{args.weights}: PSNR-Y (dB) of the upscaler and of bicubic")
    print(f"{'scale':>6} {'bicubic':>8} " + " ".join(f"{m + ' (models)':>26} {'gain':>6}" for m in methods))
    for s in args.scales:
        ours: dict[str, list[float]] = {m: [] for m in methods}
        models: dict[str, str] = {}
        bicubic = []
        for path in hr_paths:
            hr = read_uint8(path).expand(3, -1, -1)
            hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4].contiguous()
            source = hr
            if real:
                lr_path = args.data / REAL_PAIR_LR / path.name
                source = read_uint8(lr_path).expand(3, -1, -1)[:, : hr.shape[1], : hr.shape[2]].contiguous()
            h, w = hr.shape[1:]
            small = imresize(source, size=(round(h / s), round(w / s)))
            picture = picture_from_array(small.permute(1, 2, 0).numpy())
            crop = math.ceil(s)
            for method, (upscaler, model) in methods.items():
                plan = upscaler.plan(picture.size, width=w, height=h, model=model)
                models[method] = plan.label
                sr = torch.from_numpy(upscaler.upscale_picture(picture, plan)).permute(2, 0, 1)
                ours[method].append(psnr(sr, hr, crop))
            back = to_array(imresize(small.float() / 255, size=(h, w)), None, False, 8)
            bicubic.append(psnr(torch.from_numpy(back).permute(2, 0, 1), hr, crop))
        b = statistics.mean(bicubic)
        cells = []
        for method in methods:
            a = statistics.mean(ours[method])
            cells.append(f"{f'{a:.2f} ({models[method]})':>26} {a - b:+6.2f}")
        print(f"{s:6g} {b:8.2f} " + " ".join(cells))


if __name__ == "__main__":
    main()
