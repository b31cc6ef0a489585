"""Restore-only (scale 1) as the service runs it, on real camera pairs: the camera's shot against its
high-resolution shot at the same size, before and after IMDN_AS.

    python bench/restore_only.py --data ../shared/data/realsr-sample

Each LR_same_size/ image goes through ``Upscaler.plan(size, scale=1)`` and the engine (the path a request with
``scale=1&content=photo`` takes: IMDN_AS at the input's size, no resize), and is scored against HR/ as
``python -m model.evaluate`` scores real pairs: RGB PSNR, border 4. The LR images are already registered at
the HR shot's size (the camera's image at the output size). Note that the bundled IMDN_AS was fine-tuned on
these four pairs: on them this is no measure of unseen scenes (docs/model-card.md has the leave-one-out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED  # noqa: E402
from model.cli import make_runner  # noqa: E402
from model.engine import Upscaler  # noqa: E402
from model.evaluate import REAL_PAIR_BORDER, REAL_PAIR_LR, read_uint8, sorted_images  # noqa: E402
from model.imageio import decode  # noqa: E402
from model.metrics import psnr  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "realsr-sample",
                        help="a folder with HR/ and LR_same_size/")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--memory-mb", type=int, default=512, help="activation budget, as the service's default")
    args = parser.parse_args(argv)
    runner = make_runner(["as"], args.weights, "cpu", args.backend)
    upscaler = Upscaler(runner, budget_bytes=args.memory_mb * 2**20, available=["as"])
    print(f"restore-only (scale 1, IMDN_AS) on {args.data.name}; RGB PSNR, border {REAL_PAIR_BORDER}")
    print(f"{'pair':<10} {'size':>10} {'input':>8} {'restored':>9} {'gain':>7} {'seconds':>8}")
    inputs, restored = [], []
    for hr_path in sorted_images(args.data / "HR"):
        lr_path = args.data / REAL_PAIR_LR / hr_path.name
        hr = read_uint8(hr_path).expand(3, -1, -1)
        picture = decode(lr_path.read_bytes())
        plan = upscaler.plan(picture.size, scale=1)
        assert plan.restore_only and plan.label == "as", plan
        started = time.perf_counter()
        out = torch.from_numpy(upscaler.upscale_picture(picture, plan)).permute(2, 0, 1)
        seconds = time.perf_counter() - started
        lr = read_uint8(lr_path).expand(3, -1, -1)
        before = psnr(lr, hr, REAL_PAIR_BORDER, y_channel=False)
        after = psnr(out[:3], hr, REAL_PAIR_BORDER, y_channel=False)
        inputs.append(before)
        restored.append(after)
        h, w = picture.size
        print(f"{hr_path.stem:<10} {f'{w}x{h}':>10} {before:8.2f} {after:9.2f} {after - before:+7.2f} {seconds:8.1f}")
        runner.release_memory()
    mean_in, mean_out = statistics.mean(inputs), statistics.mean(restored)
    print(f"{'mean':<10} {'':>10} {mean_in:8.2f} {mean_out:9.2f} {mean_out - mean_in:+7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
