"""The synthetic camera degradation: each stage against its parameters, seeding, and the whole pipeline."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from model.degrade import (
    DegradationConfig,
    Kernel,
    RoundConfig,
    add_gaussian_noise,
    add_poisson_noise,
    blur,
    blur_kernel,
    degrade,
    jpeg,
    random_kernel,
    resize,
    to_uint8,
)
from model.metrics import psnr
from model.resize import imresize


def _moments(kernel: torch.Tensor) -> tuple[float, float, float]:
    """Second moments (var_x, var_y, cov_xy) of a kernel about its centre."""
    r = kernel.shape[0] // 2
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    k = kernel.double()
    return float((k * x * x).sum()), float((k * y * y).sum()), float((k * x * y).sum())


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0])
def test_blur_kernel_iso_width_matches_sigma(sigma):
    k = blur_kernel(Kernel("iso", 31, sigma, sigma, 0.0))
    assert k.sum().item() == pytest.approx(1.0, abs=1e-5)
    var_x, var_y, cov = _moments(k)
    # sampled on the pixel grid, a Gaussian of sigma >= 1 keeps its variance sigma^2
    assert math.sqrt(var_x) == pytest.approx(sigma, rel=0.02)
    assert var_x == pytest.approx(var_y, rel=1e-6) and abs(cov) < 1e-9


def test_blur_kernel_aniso_axes_follow_sigma_and_angle():
    k = blur_kernel(Kernel("aniso", 41, 3.0, 1.0, math.pi / 2))  # the wide axis turned to vertical
    var_x, var_y, cov = _moments(k)
    assert math.sqrt(var_y) == pytest.approx(3.0, rel=0.03)
    assert math.sqrt(var_x) == pytest.approx(1.0, rel=0.05)
    assert abs(cov) < 1e-6
    diagonal = blur_kernel(Kernel("aniso", 41, 3.0, 1.0, math.pi / 4))
    assert _moments(diagonal)[2] > 1.0  # correlated along the diagonal


def test_blur_kernel_shapes_generalized_and_plateau():
    gauss = blur_kernel(Kernel("iso", 21, 2.0, 2.0, 0.0))
    assert torch.allclose(blur_kernel(Kernel("generalized", 21, 2.0, 2.0, 0.0, beta=1.0)), gauss)
    flat_top = blur_kernel(Kernel("generalized", 21, 2.0, 2.0, 0.0, beta=4.0))
    assert flat_top[10, 11] / flat_top[10, 10] > gauss[10, 11] / gauss[10, 10]  # flatter near the centre
    plateau = blur_kernel(Kernel("plateau", 21, 2.0, 2.0, 0.0, beta=1.0))
    assert plateau[10, 0] / plateau[10, 10] > 100 * gauss[10, 0] / gauss[10, 10]  # heavy tails
    with pytest.raises(ValueError, match="odd"):
        blur_kernel(Kernel("iso", 8, 1.0, 1.0, 0.0))


def test_blur_of_an_impulse_is_the_kernel_and_keeps_flat_areas():
    kernel = blur_kernel(Kernel("aniso", 9, 1.5, 0.7, 0.3))
    impulse = torch.zeros(3, 21, 21)
    impulse[:, 10, 10] = 1.0
    out = blur(impulse, kernel)
    assert torch.allclose(out[0, 6:15, 6:15], kernel.flip(0, 1), atol=1e-6)
    flat = torch.full((3, 16, 16), 0.4)
    assert torch.allclose(blur(flat, kernel), flat, atol=1e-6)


@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_resize_modes_size_and_flat_fields(mode):
    flat = torch.full((3, 40, 30), 0.25)
    out = resize(flat, (13, 11), mode)
    assert out.shape == (3, 13, 11)
    assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-5)


@pytest.mark.parametrize("sigma", [2.0, 10.0, 25.0])
def test_gaussian_noise_std_matches_sigma(sigma):
    gen = torch.Generator().manual_seed(1)
    clean = torch.full((3, 128, 128), 0.5)
    noise = add_gaussian_noise(clean, sigma / 255, gray=False, gen=gen) - clean
    assert noise.std().item() * 255 == pytest.approx(sigma, rel=0.03)
    assert abs(noise.mean().item()) * 255 < 0.1 * sigma
    gray = add_gaussian_noise(clean, sigma / 255, gray=True, gen=gen) - clean
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(noise[0], noise[1])


@pytest.mark.parametrize("sigma", [3.0, 12.0])
def test_poisson_noise_is_signal_dependent(sigma):
    gen = torch.Generator().manual_seed(2)
    mid, dark = torch.full((3, 160, 160), 0.5), torch.full((3, 160, 160), 0.125)
    at_mid = (add_poisson_noise(mid, sigma / 255, gray=False, gen=gen) - mid).std().item() * 255
    at_dark = (add_poisson_noise(dark, sigma / 255, gray=False, gen=gen) - dark).std().item() * 255
    assert at_mid == pytest.approx(sigma, rel=0.05)
    assert at_dark == pytest.approx(sigma / 2, rel=0.08)  # std grows as sqrt(signal): 0.125 is a quarter of 0.5
    gray = add_poisson_noise(mid, sigma / 255, gray=True, gen=gen) - mid
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])


def test_jpeg_is_pillows_round_trip_at_that_quality(make_image):
    image = torch.from_numpy(make_image(48, 64, noise=6.0)).permute(2, 0, 1).float() / 255
    errors = {}
    for quality in (30, 60, 95):
        out = jpeg(image, quality)
        buffer = io.BytesIO()
        Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
        expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(expected.copy()).permute(2, 0, 1))
        errors[quality] = psnr(out, to_uint8(image), crop_border=0)
    assert errors[30] < errors[60] < errors[95]


@pytest.mark.parametrize("pixel", [1.0, 4.0])
def test_random_kernels_stay_in_their_ranges(pixel):
    """Widths are drawn in output pixels (`pixel` input pixels each); sizes never cut a kernel short."""
    rounds = RoundConfig()
    rng = random.Random(3)
    kinds = set()
    low, high = rounds.sigma[0] * pixel, rounds.sigma[1] * pixel
    for _ in range(200):
        k = random_kernel(rounds, rng, pixel)
        kinds.add(k.kind)
        assert k.size in rounds.kernel_sizes or k.size == 2 * math.ceil(2.5 * max(k.sigma_x, k.sigma_y)) + 1
        assert k.size >= 5 * max(k.sigma_x, k.sigma_y) and k.size % 2 == 1
        assert low <= k.sigma_x <= high and low <= k.sigma_y <= high
        if k.kind == "iso":
            assert k.sigma_x == k.sigma_y
    assert kinds == {"iso", "aniso", "generalized", "plateau"}


def test_degrade_is_seeded_same_size_and_in_range(make_image):
    hr = torch.from_numpy(make_image(64, 72, noise=4.0)).permute(2, 0, 1)
    config = DegradationConfig()
    a = [degrade(hr, config, random.Random(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    b = degrade(hr, config, random.Random(8))
    assert not torch.equal(a[0], b)
    for out in (a[0], b):
        assert out.shape == (3, 64, 72) and out.dtype == torch.float32
        assert out.min().item() >= 0 and out.max().item() <= 1


def test_degrade_clean_share_is_the_bicubic_round_trip(make_image):
    hr = torch.from_numpy(make_image(48, 48)).permute(2, 0, 1)
    config = DegradationConfig(clean_prob=1.0, scale=(2.0, 2.0))
    expected = imresize(imresize(hr, size=(24, 24)), size=(48, 48), float_output=True) / 255
    assert torch.allclose(degrade(hr, config, random.Random(0)), expected.clamp(0, 1))


def test_degrade_blurs_more_than_the_clean_round_trip_on_average(make_image):
    """Over many draws the camera model loses more detail than bicubic alone: it is not a no-op."""
    hr = torch.from_numpy(make_image(64, 64, noise=10.0)).permute(2, 0, 1)
    camera, clean = DegradationConfig(clean_prob=0.0), DegradationConfig(clean_prob=1.0)
    rng_a, rng_b = random.Random(11), random.Random(11)
    camera_psnr = np.mean([psnr(to_uint8(degrade(hr, camera, rng_a)), hr, 4) for _ in range(12)])
    clean_psnr = np.mean([psnr(to_uint8(degrade(hr, clean, rng_b)), hr, 4) for _ in range(12)])
    assert camera_psnr < clean_psnr - 0.4


def test_degrade_second_round_only_when_drawn(make_image, monkeypatch):
    import model.degrade as degrade_module

    calls: list[tuple[int, int]] = []
    real = degrade_module.degrade_round

    def spy(image, size, rounds, rng, gen):
        calls.append(size)
        return real(image, size, rounds, rng, gen)

    monkeypatch.setattr(degrade_module, "degrade_round", spy)
    hr = torch.from_numpy(make_image(64, 64)).permute(2, 0, 1)
    degrade(hr, DegradationConfig(clean_prob=0.0, second_prob=1.0, scale=(4.0, 4.0)), random.Random(0))
    assert len(calls) == 2 and calls[-1] == (16, 16) and calls[0][0] > 16  # the middle size lies between
    calls.clear()
    degrade(hr, DegradationConfig(clean_prob=0.0, second_prob=0.0, scale=(4.0, 4.0)), random.Random(0))
    assert calls == [(16, 16)]


def test_patch_sampler_with_degradation_gives_same_size_seeded_pairs(tmp_path, make_image):
    from model.data import PatchSampler

    hr_images = [torch.from_numpy(make_image(48, 56, seed=s)).permute(2, 0, 1) for s in range(3)]
    a = PatchSampler(None, hr_images, scale=1, hr_patch=32, seed=5, degradation=DegradationConfig())
    b = PatchSampler(None, hr_images, scale=1, hr_patch=32, seed=5, degradation=DegradationConfig())
    lr_a, hr_a = a.sample(4)
    lr_b, hr_b = b.sample(4)
    assert lr_a.shape == hr_a.shape == (4, 3, 32, 32)
    assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b)
    assert not torch.equal(lr_a, hr_a)


def _textured(size: int = 96, seed: int = 0) -> torch.Tensor:
    """(3,size,size) float: random texture at several scales, so every frequency constrains a kernel fit."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.zeros(3, size, size)
    for cells in (4, 12, 48):
        coarse = torch.rand((1, 3, cells, cells), generator=gen)
        image += torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    return (image / 3).clamp(0, 1)


def test_fit_pair_recovers_a_known_blur_and_noise():
    from model.camera_fit import fit_pair

    hr = _textured(128)
    true = blur_kernel(Kernel("iso", 13, 1.3, 1.3, 0.0))
    gen = torch.Generator().manual_seed(1)
    lr = (blur(hr, true) + torch.randn(hr.shape, generator=gen) * 2 / 255).clamp(0, 1)
    fit = fit_pair(lr, hr, size=13)
    kernel = fit["kernel"]
    assert kernel.shape == (13, 13) and float(kernel.sum()) == pytest.approx(1, abs=1e-4)
    assert fit["width"] == pytest.approx(1.3, abs=0.15)
    # the fitted blur reproduces the true one far more closely than the noise it was fitted through
    assert psnr(to_uint8(blur(hr, kernel)), to_uint8(blur(hr, true)), 8) > 45
    assert fit["noise_sigma"] == pytest.approx(2.0, rel=0.3)
    assert fit["noise_correlation"] < 0.2  # white noise
    assert all(g == pytest.approx(1, abs=0.03) and abs(o) < 1.5 for g, o in fit["tone"])


def test_fitted_degradation_round_trip_and_draws():
    from model.camera_fit import fit_degradation
    from model.degrade import FittedDegradation, degrade_fitted

    hr = _textured(64)
    pairs = {name: (blur(hr, blur_kernel(Kernel("iso", 9, s, s, 0.0))), hr) for name, s in (("a", 0.8), ("b", 1.6))}
    fitted = fit_degradation(pairs, size=9)
    assert fitted.sources == ("a", "b") and len(fitted.kernels) == 2
    again = FittedDegradation.from_dict(json_round_trip(fitted.to_dict()))
    assert again == fitted and again.report == fitted.report
    first = degrade_fitted(hr, fitted, random.Random(3))
    assert torch.equal(first, degrade(hr, fitted, random.Random(3)))  # degrade() dispatches on the kind
    assert first.shape == hr.shape and float(first.min()) >= 0 and float(first.max()) <= 1
    assert torch.equal(first, (first * 255).round() / 255)  # stored as 8 bits
    assert psnr(to_uint8(first), to_uint8(hr), 4) < 40  # it did blur


def json_round_trip(data: dict) -> dict:
    import json

    return json.loads(json.dumps(data))


def test_stretch_kernel_widens_and_keeps_the_sum():
    from model.camera_fit import kernel_width
    from model.degrade import stretch_kernel

    kernel = blur_kernel(Kernel("iso", 15, 1.0, 1.0, 0.0))
    wider = stretch_kernel(kernel, 1.5)
    assert wider.shape[0] % 2 == 1 and float(wider.sum()) == pytest.approx(1, abs=1e-5)
    assert kernel_width(wider) == pytest.approx(1.5, abs=0.1)
    assert torch.equal(stretch_kernel(kernel, 1.0), kernel)


def test_grainy_noise_is_coarser_with_grain():
    from model.camera_fit import _lag_correlation
    from model.degrade import grainy_noise

    gen = torch.Generator().manual_seed(0)
    fine, coarse = grainy_noise((64, 64), 1, 0.0, gen), grainy_noise((64, 64), 3, 1.0, gen)
    assert float(fine.std()) == pytest.approx(1, abs=0.01)
    assert _lag_correlation(fine) < 0.1 < 0.6 < _lag_correlation(coarse)
    assert torch.allclose(coarse[0], coarse[2])  # gray: the same in every channel
