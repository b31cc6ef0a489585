"""PSNR / SSIM on Y as SR papers compute them, on pairs whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from model.metrics import psnr, ssim, to_y


def _rgb(seed: int, size: tuple[int, int] = (32, 40)) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randint(30, 220, (3, *size), dtype=torch.uint8)


def test_to_y_known_values():
    image = torch.tensor([[[255, 0, 0, 0, 255]], [[0, 255, 0, 0, 255]], [[0, 0, 255, 0, 255]]], dtype=torch.uint8)
    y = to_y(image)
    assert y.dtype == torch.float64 and y.shape == (1, 5)
    expected = [16 + 65.481, 16 + 128.553, 16 + 24.966, 16, 235]
    assert y[0].tolist() == [float(round(v)) for v in expected]


def test_to_y_gray_shapes_agree():
    gray = torch.randint(0, 256, (9, 7), dtype=torch.uint8)
    assert torch.equal(to_y(gray), to_y(gray[None]))
    assert torch.equal(to_y(gray), to_y(gray[None].expand(3, -1, -1)))


def test_to_y_rejects_other_shapes():
    with pytest.raises(ValueError, match="expected"):
        to_y(torch.zeros(4, 5, 5))


def test_psnr_ssim_identical_images():
    image = _rgb(0)
    assert psnr(image, image.clone(), crop_border=2) == math.inf
    assert ssim(image, image.clone(), crop_border=2) == pytest.approx(1.0, abs=1e-12)


def test_psnr_one_gray_level_offset_on_y():
    """Gray pixels one level apart have Y values exactly one apart after rounding: MSE 1."""
    hr = torch.full((3, 24, 24), 100, dtype=torch.uint8)
    sr = hr + 1
    # Y(101) - Y(100) = 219/255 before rounding; check the rounded difference really is 1 here
    assert torch.all(to_y(sr) - to_y(hr) == 1)
    expected = 10 * math.log10(255**2 / 1)
    assert expected == pytest.approx(48.1308, abs=1e-4)
    assert psnr(sr, hr, crop_border=4) == pytest.approx(expected, abs=1e-9)


def test_psnr_known_mse_without_y():
    hr = torch.zeros(3, 10, 10, dtype=torch.uint8)
    sr = hr.clone()
    sr[:, :5] = 10  # half the values off by 10: MSE 50
    assert psnr(sr, hr, crop_border=0, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 50))


def test_psnr_crop_border_ignores_edges():
    hr = _rgb(1)
    sr = hr.clone()
    sr[:, :3] = 0
    sr[:, :, -3:] = 255
    assert psnr(sr, hr, crop_border=3) == math.inf
    assert psnr(sr, hr, crop_border=2) < 40


def test_psnr_ssim_gray_hw_input():
    torch.manual_seed(2)
    hr = torch.randint(0, 256, (30, 30), dtype=torch.uint8)
    sr = (hr.to(torch.int16) + torch.randint(-3, 4, hr.shape, dtype=torch.int16)).clamp(0, 255).to(torch.uint8)
    as_rgb = psnr(sr[None].expand(3, -1, -1), hr[None].expand(3, -1, -1), crop_border=2)
    assert psnr(sr, hr, crop_border=2) == pytest.approx(as_rgb)
    assert 30 < psnr(sr, hr, crop_border=2) < 60
    assert 0 < ssim(sr, hr, crop_border=2) < 1
    assert ssim(sr, hr, crop_border=2) == pytest.approx(ssim(sr[None], hr[None], crop_border=2))
    assert psnr(sr, hr, crop_border=0, y_channel=False) > 0


def test_ssim_symmetric_and_decreases_with_noise():
    hr = _rgb(3)
    torch.manual_seed(4)
    noise = torch.randint(-20, 21, hr.shape)
    slightly = (hr.to(torch.int16) + noise // 4).clamp(0, 255).to(torch.uint8)
    badly = (hr.to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)
    assert ssim(slightly, hr, 2) == pytest.approx(ssim(hr, slightly, 2))
    assert 1 > ssim(slightly, hr, 2) > ssim(badly, hr, 2) > 0


def test_ssim_constant_offset_matches_formula():
    """For constant images SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1)."""
    hr = torch.full((3, 16, 16), 100, dtype=torch.uint8)
    sr = hr + 5
    a, b = float(to_y(sr)[0, 0]), float(to_y(hr)[0, 0])
    c1 = (0.01 * 255) ** 2
    assert ssim(sr, hr, crop_border=0) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_metrics_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(3, 10, 10), torch.zeros(3, 10, 11), crop_border=0)
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(torch.zeros(3, 20, 20), torch.zeros(20, 20), crop_border=0)


def test_metrics_over_cropping_raises():
    image = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match="nothing left"):
        psnr(image, image, crop_border=4)
    with pytest.raises(ValueError, match="nothing left"):
        ssim(image, image, crop_border=5)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(3, 14, 14), torch.zeros(3, 14, 14), crop_border=2)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(image, image, crop_border=-1)
