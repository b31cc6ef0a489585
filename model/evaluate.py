"""Evaluate IMDN weights on benchmark folders: PSNR / SSIM on Y, as the paper reports.

    python -m model.evaluate --weights default --data ../shared/data/benchmarks --scale 2 3 4
    python -m model.evaluate --weights official:../shared/reference/official-imdn --json out.json
    python -m model.evaluate --weights default --data ../shared/data/realsr-sample

A data root is either one set or a folder of sets. A benchmark set has ``HR/``
and ``LR_bicubic/X<s>/``; HR images are cropped to LR size x scale (modcrop).
A real-pair set has ``HR/`` and ``LR_same_size/`` (the RealSR layout): IMDN_AS
runs on the LR as it is, which is what it gets after the engine's bicubic
pre-scaling, and the row reports RGB PSNR, Y PSNR and SSIM (border 4), next to
the same numbers for the LR as it is.
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
from model.imdn import IMDN, IMDN_AS
from model.metrics import psnr, ssim
from model.weights import WeightsError, load_model, resolve_weights

REAL_PAIR_LR = "LR_same_size"
REAL_PAIR_BORDER = 4  # the authors' protocol for IMDN_AS on RealSR


@dataclass
class SetResult:
    set: str
    scale: int
    psnr: float
    ssim: float
    images: int
    seconds: float


@dataclass
class RealSetResult:
    """IMDN_AS on real same-size pairs: psnr is on RGB, ssim on Y; input_* score the LR as it is."""

    set: str
    scale: int  # 1: same-size input and output
    model: str
    psnr: float
    psnr_y: float
    ssim: float
    input_psnr: float
    input_psnr_y: float
    input_ssim: float
    images: int
    seconds: float


def find_sets(root: Path) -> list[Path]:
    """A set folder (with HR/) or a folder of them -> the set folders, sorted by name."""
    if (root / "HR").is_dir():
        return [root]
    sets = sorted(p for p in root.iterdir() if (p / "HR").is_dir()) if root.is_dir() else []
    if not sets:
        raise FileNotFoundError(f"{root}: no benchmark set found (expected HR/ with LR_bicubic/X<s>/ "
                                f"or {REAL_PAIR_LR}/ folders)")
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


def is_real_pair_set(set_dir: Path) -> bool:
    return (set_dir / REAL_PAIR_LR).is_dir()


@torch.inference_mode()
def restore_same_size(model: IMDN_AS, lr: torch.Tensor) -> torch.Tensor:
    """lr: (3,H,W) uint8 -> (3,H,W) uint8; padded (replicate) to a multiple of 4 for the network, then cropped."""
    h, w = lr.shape[-2:]
    x = lr.to(next(model.parameters()).device).float().div(255)[None]
    x = torch.nn.functional.pad(x, (0, -w % 4, 0, -h % 4), mode="replicate")
    return model(x)[0, :, :h, :w].clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def evaluate_real_set(model: IMDN_AS, set_dir: Path, save_dir: Path | None = None) -> RealSetResult:
    start = time.perf_counter()
    rows = []
    hr_paths = sorted_images(set_dir / "HR")
    for hr_path in hr_paths:
        lr_path = next((p for p in (set_dir / REAL_PAIR_LR).glob(hr_path.stem + ".*")
                        if p.suffix.lower() in IMAGE_SUFFIXES), None)
        if lr_path is None:
            raise FileNotFoundError(f"{set_dir / REAL_PAIR_LR}: no LR image for {hr_path.name}")
        lr, hr = read_uint8(lr_path).expand(3, -1, -1), read_uint8(hr_path).expand(3, -1, -1)
        if lr.shape != hr.shape:
            raise ValueError(f"{hr_path.name}: LR {tuple(lr.shape)} and HR {tuple(hr.shape)} differ in size")
        sr = restore_same_size(model, lr)
        b = REAL_PAIR_BORDER
        rows.append([psnr(sr, hr, b, y_channel=False), psnr(sr, hr, b), ssim(sr, hr, b),
                     psnr(lr, hr, b, y_channel=False), psnr(lr, hr, b), ssim(lr, hr, b)])
        if save_dir is not None:
            out = save_dir / set_dir.name / "AS"
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sr.permute(1, 2, 0).numpy()).save(out / f"{hr_path.stem}.png")
    if not rows:
        raise FileNotFoundError(f"{set_dir / 'HR'}: no images")
    m = [float(v) for v in np.mean(rows, axis=0)]
    return RealSetResult(set_dir.name, 1, "as", psnr=m[0], psnr_y=m[1], ssim=m[2], input_psnr=m[3],
                         input_psnr_y=m[4], input_ssim=m[5], images=len(rows), seconds=time.perf_counter() - start)


def sorted_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def evaluate(weights: str, data: Path, scales: list[int],
             save_dir: Path | None = None) -> list[SetResult | RealSetResult]:
    """Every set under `data`: benchmark sets at each scale, real-pair sets once with IMDN_AS."""
    sets = find_sets(data)
    benchmark_sets = [s for s in sets if not is_real_pair_set(s)]
    results: list[SetResult | RealSetResult] = []
    for scale in scales if benchmark_sets else []:
        model = load_model(f"x{scale}", resolve_weights(weights, f"x{scale}"))
        assert isinstance(model, IMDN)
        for set_dir in benchmark_sets:
            results.append(evaluate_set(model, set_dir, scale, save_dir))
    real_sets = [s for s in sets if is_real_pair_set(s)]
    if real_sets:
        restorer = load_model("as", resolve_weights(weights, "as"))
        assert isinstance(restorer, IMDN_AS)
        results.extend(evaluate_real_set(restorer, s, save_dir) for s in real_sets)
    return results


def format_table(results: list[SetResult | RealSetResult]) -> str:
    lines = []
    benchmark = [r for r in results if isinstance(r, SetResult)]
    if benchmark:
        lines.append(f"{'set':<12} {'scale':>5} {'PSNR':>8} {'SSIM':>7} {'images':>6} {'seconds':>8}")
        for r in benchmark:
            lines.append(f"{r.set:<12} {'x' + str(r.scale):>5} {r.psnr:8.2f} {r.ssim:7.4f} {r.images:6d} "
                         f"{r.seconds:8.1f}")
    real = [r for r in results if isinstance(r, RealSetResult)]
    if real:
        if lines:
            lines.append("")
        lines.append(f"{'set':<14} {'':<9} {'RGB PSNR':>8} {'Y PSNR':>7} {'SSIM':>7} {'images':>6} {'seconds':>8}")
        for q in real:
            lines.append(f"{q.set:<14} {'input':<9} {q.input_psnr:8.2f} {q.input_psnr_y:7.2f} {q.input_ssim:7.4f} "
                         f"{q.images:6d} {'':>8}")
            lines.append(f"{'':<14} {'IMDN_AS':<9} {q.psnr:8.2f} {q.psnr_y:7.2f} {q.ssim:7.4f} {q.images:6d} "
                         f"{q.seconds:8.1f}")
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
