"""Evaluate IMDN weights on benchmark folders: PSNR / SSIM on Y, as the paper reports.

    python -m model.evaluate --weights default --data ../shared/data/benchmarks --scale 2 3 4
    python -m model.evaluate --weights official:../shared/reference/official-imdn --json out.json

A data root is either one set (``HR/`` and ``LR_bicubic/X<s>/`` inside) or a
folder of such sets. HR images are cropped to LR size x scale (modcrop).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.imageio import IMAGE_SUFFIXES
from model.imdn import IMDN
from model.metrics import psnr, ssim
from model.weights import WeightsError, load_model, resolve_weights


@dataclass
class SetResult:
    set: str
    scale: int
    psnr: float
    ssim: float
    images: int
    seconds: float


def find_sets(root: Path) -> list[Path]:
    """A set folder (with HR/) or a folder of them -> the set folders, sorted by name."""
    if (root / "HR").is_dir():
        return [root]
    sets = sorted(p for p in root.iterdir() if (p / "HR").is_dir()) if root.is_dir() else []
    if not sets:
        raise FileNotFoundError(f"{root}: no benchmark set found (expected HR/ and LR_bicubic/X<s>/ folders)")
    return sets


def read_uint8(path: Path) -> torch.Tensor:
    """Image file -> (C,H,W) uint8 with C = 3 (RGB) or 1 (grayscale)."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("L" if img.mode in ("L", "I;16", "I") else "RGB"))
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)


@torch.inference_mode()
def super_resolve(model: IMDN, lr: torch.Tensor) -> torch.Tensor:
    """lr: (C,H,W) uint8, C in {1,3} -> (3,sH,sW) uint8; grayscale goes in as 3 equal channels, as the authors did."""
    x = lr.to(next(model.parameters()).device).float().div(255)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return model(x[None])[0].clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def evaluate_set(model: IMDN, set_dir: Path, scale: int, save_dir: Path | None = None) -> SetResult:
    lr_dir = set_dir / "LR_bicubic" / f"X{scale}"
    hr_paths = sorted(p for p in (set_dir / "HR").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not lr_dir.is_dir() or not hr_paths:
        raise FileNotFoundError(f"{set_dir}: missing {lr_dir.name} LR folder or HR images")
    psnrs, ssims = [], []
    start = time.perf_counter()
    for hr_path in hr_paths:
        lr_path = next((p for p in lr_dir.glob(hr_path.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES), None)
        if lr_path is None:
            raise FileNotFoundError(f"{lr_dir}: no LR image for {hr_path.name}")
        lr, hr = read_uint8(lr_path), read_uint8(hr_path)
        sr = super_resolve(model, lr)
        hr = hr[:, : sr.shape[1], : sr.shape[2]]
        if hr.shape[0] == 1:
            hr = hr.expand(3, -1, -1)
        if hr.shape != sr.shape:
            raise ValueError(f"{hr_path}: HR {tuple(hr.shape)} smaller than LR x{scale} {tuple(sr.shape)}")
        psnrs.append(psnr(sr, hr, crop_border=scale))
        ssims.append(ssim(sr, hr, crop_border=scale))
        if save_dir is not None:
            out = save_dir / set_dir.name / f"X{scale}"
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sr.permute(1, 2, 0).numpy()).save(out / f"{hr_path.stem}.png")
    return SetResult(set_dir.name, scale, float(np.mean(psnrs)), float(np.mean(ssims)), len(hr_paths),
                     time.perf_counter() - start)


def evaluate(weights: str, data: Path, scales: list[int], save_dir: Path | None = None) -> list[SetResult]:
    sets = find_sets(data)
    results = []
    for scale in scales:
        model = load_model(f"x{scale}", resolve_weights(weights, f"x{scale}"))
        assert isinstance(model, IMDN)
        for set_dir in sets:
            results.append(evaluate_set(model, set_dir, scale, save_dir))
    return results


def format_table(results: list[SetResult]) -> str:
    lines = [f"{'set':<12} {'scale':>5} {'PSNR':>8} {'SSIM':>7} {'images':>6} {'seconds':>8}"]
    for r in results:
        lines.append(f"{r.set:<12} {'x' + str(r.scale):>5} {r.psnr:8.2f} {r.ssim:7.4f} {r.images:6d} {r.seconds:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default",
                        help="'default' (project weights), 'official:DIR' (authors' .pth files) or a folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/benchmarks"),
                        help="a benchmark set folder or a folder of sets")
    parser.add_argument("--scale", type=int, nargs="+", default=[2, 3, 4], choices=[2, 3, 4])
    parser.add_argument("--json", type=Path, help="write the results as a JSON list to this file")
    parser.add_argument("--save-images", type=Path, help="write the SR images under this folder")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = evaluate(args.weights, args.data, args.scale, args.save_images)
    except (WeightsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
