"""PSNR and SSIM as SR papers report them: Y channel (BT.601), border shaved.

Matches the IMDN authors' evaluation: Y = 16 + (65.481 R + 128.553 G + 24.966 B)/255
rounded to integers, ``crop_border`` pixels removed on every side, PSNR with peak
255, SSIM with an 11x11 Gaussian window (sigma 1.5) and population statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Y_WEIGHTS = (65.481, 128.553, 24.966)


def to_y(image: torch.Tensor) -> torch.Tensor:
    """image: (3,H,W) RGB or (H,W) / (1,H,W) gray, uint8 values -> (H,W) float64 Y in [16, 235], rounded."""
    img = image.to(torch.float64)
    if img.dim() == 3 and img.shape[0] == 1:
        img = img[0]
    if img.dim() == 2:
        y = 16 + img * (sum(Y_WEIGHTS) / 255)
    elif img.dim() == 3 and img.shape[0] == 3:
        r, g, b = img[0], img[1], img[2]
        y = 16 + (Y_WEIGHTS[0] * r + Y_WEIGHTS[1] * g + Y_WEIGHTS[2] * b) / 255
    else:
        raise ValueError(f"expected (3,H,W) or (H,W) image, got shape {tuple(image.shape)}")
    return torch.round(y.clamp(0, 255))


def _prepare(
    sr: torch.Tensor, hr: torch.Tensor, crop_border: int, y_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if sr.shape != hr.shape:
        raise ValueError(f"images differ in shape: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if y_channel:
        a, b = to_y(sr), to_y(hr)
    else:
        a, b = sr.to(torch.float64), hr.to(torch.float64)
        if a.dim() == 2:
            a, b = a[None], b[None]
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    if a.numel() == 0:
        raise ValueError(f"nothing left after cropping {crop_border} pixels from {tuple(sr.shape)}")
    return a, b


def psnr(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, y_channel: bool = True) -> float:
    """sr, hr: same-shape uint8-valued images ((3,H,W) or (H,W)) -> PSNR in dB (inf if equal)."""
    a, b = _prepare(sr, hr, crop_border, y_channel)
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, y_channel: bool = True) -> float:
    """sr, hr: same-shape uint8-valued images -> mean SSIM (11x11 Gaussian, sigma 1.5, valid region)."""
    a, b = _prepare(sr, hr, crop_border, y_channel)
    if a.dim() == 2:
        a, b = a[None], b[None]
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {tuple(a.shape[-2:])}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_window()
    channels = a.shape[0]

    def blur(x: torch.Tensor) -> torch.Tensor:
        # Separable Gaussian over the valid region only (no padding), per channel.
        x = F.conv2d(x[None], g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
        return F.conv2d(x, g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)[0]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())
