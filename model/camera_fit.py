"""Fitting the synthetic degradation to real same-size pairs (HR/ + LR_same_size/): each pair's blur kernel
by least squares (HR -> LR, on image gradients over the whole image), the noise left in flat areas (level,
grain, colour), and the tone and JPEG evidence, reported; the result is a ``FittedDegradation``
(model/degrade.py) that training draws from (``--degradation camera-fitted``).

    python -m model.camera_fit ../shared/data/realsr-sample -o camera_fitted.json [--exclude cam1_02]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from model.data import load_real_pairs, real_pair_names
from model.degrade import FittedDegradation, Kernel, blur, blur_kernel, grainy_noise


def _gradients(image: torch.Tensor) -> list[torch.Tensor]:
    return [image[..., :, 1:] - image[..., :, :-1], image[..., 1:, :] - image[..., :-1, :]]


def kernel_normal_equations(lr: torch.Tensor, hr: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares for a (size,size) kernel k with grad(LR) ~ k * grad(HR), over every pixel of every channel.

    Returns (A^T A, A^T b) so that several pairs' equations add up. Both come from the
    images' auto- and cross-correlations (FFT), not from sampled rows: a whole image
    pins down even the kernel's faint tails. Gradients drop the tone offset and weight
    edges, where the blur shows.
    """
    r = size // 2
    offsets = torch.stack(torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij"), -1)
    offsets = offsets.reshape(-1, 2)
    diff = offsets[None, :, :] - offsets[:, None, :]
    ata = torch.zeros(size * size, size * size, dtype=torch.float64)
    atb = torch.zeros(size * size, dtype=torch.float64)
    for gx, gy in zip(_gradients(hr.double()), _gradients(lr.double()), strict=True):
        shape = (gx.shape[-2] + 2 * size, gx.shape[-1] + 2 * size)
        x, y = torch.fft.rfft2(gx, s=shape), torch.fft.rfft2(gy, s=shape)
        rxx = torch.fft.irfft2(x.conj() * x, s=shape).sum(0)
        rxy = torch.fft.irfft2(x.conj() * y, s=shape).sum(0)
        ata += rxx[diff[..., 0] % shape[0], diff[..., 1] % shape[1]]
        atb += rxy[offsets[:, 0] % shape[0], offsets[:, 1] % shape[1]]
    return ata, atb


def solve_kernel(ata: torch.Tensor, atb: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """The kernel minimising ||A k - b||^2 + ridge * mean(diag) * ||k||^2 subject to sum(k) = 1, as (size,size).

    The result is a correlation kernel in ``blur``'s convention (``F.conv2d``): blur(HR, k) ~ LR."""
    n = ata.shape[0]
    system = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    system[:n, :n] = ata + ridge * ata.diagonal().mean() * torch.eye(n, dtype=torch.float64)
    system[:n, n] = system[n, :n] = 1
    solution = torch.linalg.solve(system, torch.cat([atb, torch.ones(1, dtype=torch.float64)]))
    size = math.isqrt(n)
    # The equations are in convolution form (LR(p) = sum_d k(d) HR(p - d)); blur() correlates: flip.
    return solution[:n].float().reshape(size, size).flip(0, 1)


def kernel_width(kernel: torch.Tensor) -> float:
    """The standard deviation (pixels) of the isotropic Gaussian closest to `kernel` (least squares): a width
    that the fitted kernels' faint, noisy tails do not swamp, as they do second moments."""
    size = kernel.shape[-1]
    sigmas = torch.arange(0.1, 5.0, 0.01)
    candidates = torch.stack([blur_kernel(Kernel("iso", size, float(s), float(s), 0.0)) for s in sigmas])
    return round(float(sigmas[(candidates - kernel).pow(2).sum((1, 2)).argmin()]), 2)


def _lag_correlation(residual: torch.Tensor, lag: int = 1) -> float:
    a, b = residual[..., :, :-lag], residual[..., :, lag:]
    return float((a * b).sum() / (residual.pow(2).sum()).clamp(min=1e-12))


def grain_for_correlation(target: float, grains: Sequence[float] = (1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6)) -> float:
    """The noise grain whose lag-1 correlation (measured on a synthetic draw) is closest to `target`."""
    gen = torch.Generator().manual_seed(0)
    measured = {g: _lag_correlation(grainy_noise((256, 256), g, 0.0, gen)) for g in grains}
    return min(grains, key=lambda g: abs(measured[g] - target))


def measure_noise(lr: torch.Tensor, synthetic: torch.Tensor, block: int = 16,
                  flattest: float = 0.1) -> tuple[float, float, float]:
    """Noise left in the flattest blocks of `synthetic` (the blurred HR): (std in 8-bit steps, lag-1 correlation,
    share of its variance common to the channels). Flat blocks: the `flattest` share by the synthetic's own std."""
    residual = (lr - synthetic) * 255
    h, w = residual.shape[-2] // block * block, residual.shape[-1] // block * block
    res = residual[:, :h, :w].reshape(3, h // block, block, w // block, block).permute(1, 3, 0, 2, 4)
    res = res.reshape(-1, 3, block, block)
    flat = (synthetic[:, :h, :w] * 255).reshape(3, h // block, block, w // block, block).permute(1, 3, 0, 2, 4)
    activity = flat.reshape(-1, 3 * block * block).std(1)
    chosen = res[activity.argsort()[: max(1, int(len(activity) * flattest))]]
    chosen = chosen - chosen.mean((2, 3), keepdim=True)  # a block's mean error is tone or registration, not noise
    sigma = float(chosen.pow(2).mean().sqrt())
    common = chosen.mean(1)
    gray = float((common.pow(2).mean() / chosen.pow(2).mean()).clamp(0, 1)) if sigma > 0 else 0.0
    gray = max(0.0, min(1.0, (3 * gray - 1) / 2))  # independent channels give 1/3 by averaging alone
    return sigma, _lag_correlation(chosen), gray


def tone_fit(lr: torch.Tensor, synthetic: torch.Tensor) -> list[list[float]]:
    """Per channel (gain, offset in 8-bit steps) of LR ~ gain * synthetic + offset: a tone or colour change."""
    fits = []
    for c in range(3):
        x, y = synthetic[c].flatten().double(), lr[c].flatten().double()
        xm, ym = x.mean(), y.mean()
        gain = float(((x - xm) * (y - ym)).sum() / (x - xm).pow(2).sum())
        fits.append([round(gain, 4), round(float(ym - gain * xm) * 255, 2)])
    return fits


def jpeg_blockiness(image: torch.Tensor) -> float:
    """Mean |step| across 8-pixel block edges over the mean elsewhere (about 1: no JPEG grid)."""
    steps = (image[..., :, 1:] - image[..., :, :-1]).abs().mean((0, 1))
    at_edges = steps[7::8].mean()
    return float(at_edges / steps.mean())


def fit_pair(lr: torch.Tensor, hr: torch.Tensor, size: int = 21) -> dict[str, object]:
    """One pair's fit: its kernel, noise and the evidence of tone and JPEG (see ``fit_degradation``)."""
    kernel = solve_kernel(*kernel_normal_equations(lr, hr, size))
    synthetic = blur(hr, kernel)
    sigma, correlation, gray = measure_noise(lr, synthetic)
    return {"kernel": kernel, "noise_sigma": sigma, "noise_correlation": correlation, "noise_gray": gray,
            "width": kernel_width(kernel), "tone": tone_fit(lr, synthetic), "jpeg_blockiness": jpeg_blockiness(lr)}


def fit_degradation(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], size: int = 21) -> FittedDegradation:
    """Real same-size pairs {name: (lr, hr)}, (3,H,W) float in [0,1] -> the fitted degradation."""
    fits = {name: fit_pair(lr, hr, size) for name, (lr, hr) in pairs.items()}
    grains = {name: grain_for_correlation(float(f["noise_correlation"])) for name, f in fits.items()}  # type: ignore[arg-type]

    def rounded(kernel: object) -> tuple[tuple[float, ...], ...]:
        assert isinstance(kernel, torch.Tensor)
        return tuple(tuple(round(float(v), 6) for v in row) for row in kernel)

    report = {name: {"width_px": f["width"],
                     "noise_sigma": round(float(f["noise_sigma"]), 3),  # type: ignore[arg-type]
                     "noise_correlation": round(float(f["noise_correlation"]), 3),  # type: ignore[arg-type]
                     "tone_gain_offset": f["tone"], "jpeg_blockiness": round(float(f["jpeg_blockiness"]), 3)}  # type: ignore[arg-type]
              for name, f in fits.items()}
    return FittedDegradation(
        sources=tuple(fits), kernels=tuple(rounded(f["kernel"]) for f in fits.values()),
        noise_sigma=tuple(round(float(f["noise_sigma"]), 3) for f in fits.values()),  # type: ignore[arg-type]
        noise_grain=tuple(grains[n] for n in fits),
        noise_gray=tuple(round(float(f["noise_gray"]), 3) for f in fits.values()),  # type: ignore[arg-type]
        report={"kernel_size": size, "pairs": report})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.camera_fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path, help="real same-size pairs (HR/ + LR_same_size/)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="JSON file for --degradation-config")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="NAME", help="leave these pairs out (file stems)")
    parser.add_argument("--size", type=int, default=21, help="kernel side (odd)")
    args = parser.parse_args(argv)

    names = [n for n in real_pair_names(args.pairs) if n not in args.exclude]
    loaded = load_real_pairs(args.pairs, exclude=args.exclude)
    fitted = fit_degradation({n: (lr.float() / 255, hr.float() / 255) for n, (lr, hr) in zip(names, loaded,
                                                                                         strict=True)}, args.size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fitted.to_dict(), indent=1) + "\n")
    for name, entry in fitted.report["pairs"].items():  # type: ignore[attr-defined]
        print(name, json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
