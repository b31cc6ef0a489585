"""What real camera pairs need that a simple correction cannot give: how far linear fixes get.

    python bench/real_pairs.py --data ../shared/data/realsr-sample

Real-pair sets (HR/ and LR_same_size/, the RealSR layout) are scored as
``python -m model.evaluate`` scores them: mean RGB PSNR, border 4. Beside the
input as it is, each row is a correction *fitted* to data and applied to every
LR image:

- tone curve, leave one out: a per-channel 256-entry lookup table (LR value ->
  mean HR value) fitted on the other pairs: a systematic colour or tone change;
- linear filter, leave one out: a KxK least-squares restoration filter
  (LR + filter * LR ~ HR) fitted on the other pairs: the best any sharpening
  of this kind does on unseen pairs;
- linear filter, all pairs: the same fitted on every pair, an upper bound;
- linear filter from synthetic pairs: fitted on train291 patches degraded by
  ``model/degrade.py`` (bicubic round trips at 2-4x, and the camera model);
  how well that degradation's *linear* part transfers to real cameras.

A network gains more than any of these only by acting non-linearly (edge- and
texture-dependent): the size of that gap says how much of the real
degradation a synthetic model must reproduce.

The second table asks the converse: how close does a synthetic degradation of
the HR image come to the camera's real LR image (PSNR of synthetic LR against
real LR, RGB, border 4)? The fitted degradation (``--degradation camera-fitted``,
``model.camera_fit.fit_degradation``) is scored leave-one-out: fitted on the other
pairs, applied to the held-out pair's HR. Nothing fitted here leaves this script.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED  # noqa: E402
from model.camera_fit import fit_degradation  # noqa: E402
from model.degrade import (  # noqa: E402
    Degradation,
    DegradationConfig,
    RoundConfig,
    blur,
    degrade,
    to_uint8,
)
from model.evaluate import REAL_PAIR_LR, read_uint8  # noqa: E402
from model.imageio import IMAGE_SUFFIXES  # noqa: E402
from model.metrics import psnr  # noqa: E402

Pair = tuple[torch.Tensor, torch.Tensor]  # (LR, HR), (3,H,W) float in [0,1]


def load_pairs(set_dir: Path) -> list[Pair]:
    paths = sorted(p for p in (set_dir / "HR").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(read_uint8(set_dir / REAL_PAIR_LR / p.name).expand(3, -1, -1).float() / 255,
             read_uint8(p).expand(3, -1, -1).float() / 255) for p in paths]


def rgb_psnr(image: torch.Tensor, hr: torch.Tensor) -> float:
    return psnr(image.clamp(0, 1).mul(255).round(), hr.mul(255).round(), 4, y_channel=False)


def fit_tone_curve(pairs: list[Pair]) -> torch.Tensor:
    """(3,256) per-channel LR value -> mean HR value; values seen fewer than 50 times map to themselves."""
    curve = torch.empty(3, 256)
    for channel in range(3):
        sums, counts = torch.zeros(256), torch.zeros(256)
        for lr, hr in pairs:
            index = lr[channel].mul(255).round().long().flatten()
            sums.index_add_(0, index, hr[channel].flatten())
            counts += torch.bincount(index, minlength=256).float()
        identity = torch.arange(256) / 255
        curve[channel] = torch.where(counts >= 50, sums / counts.clamp(min=1), identity)
    return curve


def apply_tone_curve(curve: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    index = lr.mul(255).round().long()
    return torch.stack([curve[c][index[c]] for c in range(3)])


def fit_filter(pairs: list[Pair], size: int, samples: int, seed: int = 0) -> torch.Tensor:
    """Least-squares (1,1,size,size) filter f with LR + f * LR ~ HR, from random pixels of every channel."""
    gen = torch.Generator().manual_seed(seed)
    radius = size // 2
    offsets = torch.arange(-radius, radius + 1)
    rows, targets = [], []
    for lr, hr in pairs:
        h, w = lr.shape[-2:]
        for channel in range(3):
            ys = torch.randint(radius, h - radius, (samples,), generator=gen)
            xs = torch.randint(radius, w - radius, (samples,), generator=gen)
            patch = lr[channel][ys[:, None, None] + offsets[None, :, None], xs[:, None, None] + offsets[None, None, :]]
            rows.append(patch.reshape(samples, size * size))
            targets.append(hr[channel][ys, xs] - lr[channel][ys, xs])
    a, b = torch.cat(rows).double(), torch.cat(targets).double()
    ridge = 1e-3 * torch.eye(size * size, dtype=torch.float64)
    return torch.linalg.solve(a.T @ a + ridge, a.T @ b).float().reshape(1, 1, size, size)


def apply_filter(kernel: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    radius = kernel.shape[-1] // 2
    padded = F.pad(lr[:, None], (radius,) * 4, mode="replicate")
    return lr + F.conv2d(padded, kernel)[:, 0]


def synthetic_pairs(data: Path, config: DegradationConfig, count: int, patch: int, seed: int = 1) -> list[Pair]:
    rng = random.Random(seed)
    paths = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = []
    for _ in range(count):
        image = read_uint8(paths[rng.randrange(len(paths))]).expand(3, -1, -1)
        h, w = image.shape[-2:]
        side = min(patch, h, w)
        top, left = rng.randrange(h - side + 1), rng.randrange(w - side + 1)
        hr = image[:, top : top + side, left : left + side].contiguous()
        pairs.append((degrade(hr, config, rng), hr.float() / 255))
    return pairs


def synthetic_psnr(synthetic: torch.Tensor, lr: torch.Tensor) -> float:
    """PSNR of a synthetic LR (stored as 8 bits) against the real LR, RGB, border 4."""
    return psnr(to_uint8(synthetic), lr.mul(255).round(), 4, y_channel=False)


def degradation_rows(pairs: list[Pair], names: list[str], draws: int) -> dict[str, list[float]]:
    """Per degradation, per pair: how close synthetic LR (from the pair's HR) comes to its real LR."""

    def mean_of_draws(config: Degradation, pair: Pair, seed: int) -> float:
        lr, hr = pair
        rng = random.Random(seed)
        return statistics.mean(synthetic_psnr(degrade(hr, config, rng), lr) for _ in range(draws))

    rows: dict[str, list[float]] = {"none (the HR image as it is)": [synthetic_psnr(hr, lr) for lr, hr in pairs]}
    rows[f"bicubic round trip 2-4x, mean of {draws} draws"] = [
        mean_of_draws(DegradationConfig(clean_prob=1.0, scale=(2.0, 4.0)), pair, i) for i, pair in enumerate(pairs)]
    rows[f"camera (model/degrade.py), mean of {draws} draws"] = [
        mean_of_draws(DegradationConfig(), pair, i) for i, pair in enumerate(pairs)]
    own, kernels, drawn = [], [], []
    for i, (lr, hr) in enumerate(pairs):
        fitted = fit_degradation({n: p for j, (n, p) in enumerate(zip(names, pairs, strict=True)) if j != i})
        kernels.append(statistics.mean(synthetic_psnr(blur(hr, fitted.kernel(k)), lr)
                                       for k in range(len(fitted.sources))))
        drawn.append(mean_of_draws(fitted, (lr, hr), i))
        mine = fit_degradation({names[i]: (lr, hr)})
        own.append(synthetic_psnr(blur(hr, mine.kernel(0)), lr))
    rows["camera-fitted on the others: their kernels, blur only"] = kernels
    rows[f"camera-fitted on the others: full draws (noise), {draws} draws"] = drawn
    rows["(the pair's own kernel, not held out: the bound)"] = own
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data/realsr-sample", help="HR/ + LR_same_size/")
    parser.add_argument("--train", type=Path, default=SHARED / "data/train291", help="HR images for synthetic pairs")
    parser.add_argument("--filter-size", type=int, default=13)
    parser.add_argument("--samples", type=int, default=4000, help="pixels per image and channel for each fit")
    parser.add_argument("--patches", type=int, default=120, help="synthetic training patches per degradation")
    parser.add_argument("--draws", type=int, default=4, help="random degradations drawn per pair and row")
    parser.add_argument("--degradations-only", action="store_true", help="only the synthetic LR vs real LR table")
    args = parser.parse_args()
    pairs = load_pairs(args.data)
    if len(pairs) < 2:
        sys.exit(f"{args.data}: need at least two pairs for leave-one-out fits")
    names = [p.stem for p in sorted(q for q in (args.data / "HR").iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)]
    if not args.degradations_only:
        corrections(args, pairs)
    rows = degradation_rows(pairs, names, args.draws)
    print("\nsynthetic LR from each pair's HR against its real LR: RGB PSNR (dB), border 4 "
          "(fitted rows: fitted on the other pairs)")
    print(f"{'degradation':<62} " + " ".join(f"{n:>8}" for n in names) + f" {'mean':>7}")
    for name, scores in rows.items():
        print(f"{name:<62} " + " ".join(f"{v:8.2f}" for v in scores) + f" {statistics.mean(scores):7.2f}")


def corrections(args: argparse.Namespace, pairs: list[Pair]) -> None:
    """The first table: fitted linear corrections of the real LR, against the input as it is."""

    def leave_one_out(fit: Callable[[list[Pair]], torch.Tensor],
                      apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[float]:
        return [rgb_psnr(apply(fit(pairs[:i] + pairs[i + 1 :]), lr), hr) for i, (lr, hr) in enumerate(pairs)]

    rows = {
        "input as is": [rgb_psnr(lr, hr) for lr, hr in pairs],
        "tone curve, leave one out": leave_one_out(fit_tone_curve, apply_tone_curve),
        "linear filter, leave one out": leave_one_out(lambda p: fit_filter(p, args.filter_size, args.samples),
                                                      apply_filter),
    }
    everything = fit_filter(pairs, args.filter_size, args.samples)
    rows["linear filter, all pairs"] = [rgb_psnr(apply_filter(everything, lr), hr) for lr, hr in pairs]
    plain = RoundConfig(blur_prob=0, noise_prob=0, jpeg_prob=0)
    synthetic = {
        "bicubic round trips 2-4x": DegradationConfig(clean_prob=1.0, scale=(2.0, 4.0)),
        "camera model (model/degrade.py)": DegradationConfig(),
        "blur + downscale 2-4x only": DegradationConfig(clean_prob=0, second_prob=0, scale=(2.0, 4.0),
                                                        first=RoundConfig(noise_prob=0, jpeg_prob=0)),
        "area downscale 2-4x only": DegradationConfig(clean_prob=0, second_prob=0, scale=(2.0, 4.0),
                                                      first=replace(plain, resize_modes=("area",))),
    }
    if args.train.is_dir():
        for name, config in synthetic.items():
            kernel = fit_filter(synthetic_pairs(args.train, config, args.patches, 160), args.filter_size, args.samples)
            rows[f"linear filter from {name}"] = [rgb_psnr(apply_filter(kernel, lr), hr) for lr, hr in pairs]
    else:
        print(f"({args.train} not found: no synthetic rows)")
    base = statistics.mean(rows["input as is"])
    side = args.filter_size
    print(f"{args.data.name}: {len(pairs)} pairs, mean RGB PSNR (border 4), {side}x{side} filters")
    print(f"{'correction':<60} {'RGB PSNR':>9} {'gain':>7}")
    for name, scores in rows.items():
        mean = statistics.mean(scores)
        print(f"{name:<60} {mean:9.2f} {mean - base:+7.2f}")


if __name__ == "__main__":
    main()
