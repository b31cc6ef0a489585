"""Tiled vs whole-image output on a benchmark set: the seam-free claim, measured.

    python bench/tiling.py --data ../shared/data/benchmarks/Set14 --scale 2 --core 128
    python bench/tiling.py --scale 2.5 --core 128     # IMDN_AS (bicubic pre-scaling, then tiles, or parts)

Integer scales read the set's LR_bicubic/X<s> images and run IMDN x<s>; any other scale
shrinks each HR image (cropped to a multiple of 4) by s with MATLAB bicubic and brings it
back to the HR size with bicubic + IMDN_AS. Each image is upscaled whole (one tile, with
ACS where a side is not divisible by 4) and with forced tiles of `--core` pixels,
with the whole image's CCA statistics estimated from samples ("sampled", the service
default) and refined by one more pass ("refined", the engine/CLI default). IMDN_AS is
also run in parts ("parts": head, blocks and tail over windows of a third of the feature
rows and columns each), as the engine runs it past its one-pass budget.
Prints the share of output values within 1/255 of the whole-image result, the largest
difference, and mean PSNR-Y against HR for each.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED, models_for  # noqa: E402
from model.backends import TorchRunner  # noqa: E402
from model.engine import Upscaler  # noqa: E402
from model.evaluate import read_uint8  # noqa: E402
from model.imageio import IMAGE_SUFFIXES  # noqa: E402
from model.metrics import psnr  # noqa: E402
from model.parts import feature_size, part_band_rows  # noqa: E402
from model.picture import picture_from_array  # noqa: E402
from model.resize import imresize  # noqa: E402
from model.tiled import BYTES_PER_INPUT_PIXEL  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data/benchmarks/Set14")
    parser.add_argument("--scale", type=float, default=2, help="2, 3, 4 (IMDN) or any other > 1 (IMDN_AS)")
    parser.add_argument("--core", type=int, default=128, help="forced tile core (input pixels)")
    parser.add_argument("--weights", default="default")
    args = parser.parse_args()
    integer = args.scale in (2, 3, 4)
    model = f"x{int(args.scale)}" if integer else "as"
    runner = TorchRunner(models_for(args.weights, [model]))
    def upscaler(**options: Any) -> Upscaler:  # the networks this compares: x2/x3/x4, else IMDN_AS
        return Upscaler(runner, content="clean", any_scale="as", **options)

    whole = upscaler(budget_bytes=2**40)
    # "sampled": estimated statistics only, for every model (the default refines IMDN_AS's).
    tiled = {name: upscaler(tile_size=args.core, refine_stats=refine)
             for name, refine in (("sampled", False), ("refined", True))}
    lr_dir = args.data / "LR_bicubic" / f"X{int(args.scale)}"
    shave = math.ceil(args.scale)
    names = [*tiled, *([] if integer else ["parts"])]
    scores: dict[str, list[float]] = {"whole": [], **{name: [] for name in names}}
    within: dict[str, list[float]] = {name: [] for name in names}
    worst = dict.fromkeys(names, 0)
    for hr_path in sorted(p for p in (args.data / "HR").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        hr = read_uint8(hr_path).expand(3, -1, -1)
        if integer:  # the set's own LR, by the scale
            lr = read_uint8(lr_dir / hr_path.name).expand(3, -1, -1)
            scale, width, height = args.scale, None, None
        else:  # shrunk here, brought back to the HR size
            hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4]
            lr = imresize(hr.contiguous(), size=(round(hr.shape[1] / args.scale), round(hr.shape[2] / args.scale)))
            scale, width, height = None, hr.shape[2], hr.shape[1]
        picture = picture_from_array(np.ascontiguousarray(lr.permute(1, 2, 0).numpy()))
        plan = whole.plan(picture.size, scale, width, height)
        assert plan.models == [model], plan.label
        reference = whole.upscale_picture(picture, plan).astype(np.int16)
        hr = hr[:, : reference.shape[0], : reference.shape[1]]
        scores["whole"].append(psnr(torch.from_numpy(reference).permute(2, 0, 1), hr, shave))
        if not integer:  # just under the budget for one pass, in windows of a third of the rows and columns
            size = reference.shape[:2]
            rows, cols = feature_size(size)
            budget, window = size[0] * size[1] * BYTES_PER_INPUT_PIXEL["as"] - 1, (-(-rows // 3), -(-cols // 3))
            assert part_band_rows(size, budget, window), f"{hr_path.name}: no room for IMDN_AS in parts"
            tiled["parts"] = upscaler(budget_bytes=budget, part_window=window)
        for name, tiling in tiled.items():
            out = tiling.upscale_picture(picture, plan).astype(np.int16)
            diff = np.abs(out - reference)
            within[name].append(float((diff <= 1).mean()))
            worst[name] = max(worst[name], int(diff.max()))
            scores[name].append(psnr(torch.from_numpy(out).permute(2, 0, 1), hr, shave))
    base = statistics.mean(scores["whole"])
    print(f"{args.data.name} x{args.scale:g} ({model}), tiles of {args.core} px vs whole image "
          f"({len(scores['whole'])} images)")
    print(f"{'statistics':<10} {'within 1/255':>13} {'max diff':>9} {'PSNR-Y':>8} {'delta dB':>9}")
    print(f"{'whole':<10} {'':>13} {'':>9} {base:8.3f}")
    for name in names:
        mean = statistics.mean(scores[name])
        print(f"{name:<10} {100 * min(within[name]):12.3f}% {worst[name]:>7}/255 {mean:8.3f} {mean - base:+9.4f}")
    print("(within 1/255: the worst image's share)")


if __name__ == "__main__":
    main()
