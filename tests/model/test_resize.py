"""MATLAB-compatible bicubic imresize: benchmark LR files bit for bit, windows, sizes, dtypes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from model.evaluate import read_uint8
from model.resize import contributions, cubic, imresize, output_size, resize_band_stream


def _shrink_like_benchmark(hr: torch.Tensor, lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Modcrop HR to LR x scale, then imresize by 1/scale."""
    h, w = lr.shape[1] * scale, lr.shape[2] * scale
    return imresize(hr[:, :h, :w], scale=1 / scale)


@pytest.mark.shared
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imresize_set5_lr_bit_exact(benchmarks, scale):
    set_dir = benchmarks / "Set5"
    hr_paths = sorted((set_dir / "HR").glob("*.png"))
    assert len(hr_paths) == 5
    for hr_path in hr_paths:
        lr = read_uint8(set_dir / "LR_bicubic" / f"X{scale}" / hr_path.name)
        out = _shrink_like_benchmark(read_uint8(hr_path), lr, scale)
        assert out.dtype == torch.uint8
        assert out.shape == lr.shape, hr_path.name
        assert torch.equal(out, lr), f"{hr_path.name} x{scale}: {(out != lr).sum().item()} values differ"


@pytest.mark.shared
def test_imresize_set14_lr_at_least_99_percent_equal(benchmarks):
    set_dir = benchmarks / "Set14"
    equal = total = 0
    for hr_path in sorted((set_dir / "HR").glob("*.png")):
        hr = read_uint8(hr_path)
        for scale in (2, 3, 4):
            lr = read_uint8(set_dir / "LR_bicubic" / f"X{scale}" / hr_path.name)
            out = _shrink_like_benchmark(hr, lr, scale)
            assert out.shape == lr.shape, (hr_path.name, scale)
            equal += int((out == lr).sum())
            total += lr.numel()
    assert total > 0
    assert equal / total >= 0.99, f"only {equal / total:.4%} of Set14 LR values reproduced"


@pytest.mark.parametrize(
    ("in_hw", "scale", "expected"),
    [((7, 13), 2.5, (18, 33)), ((7, 13), 1 / 3, (3, 5)), ((7, 13), 0.5, (4, 7)), ((10, 10), 0.3, (3, 3)),
     ((1, 1), 3, (3, 3)), ((5, 9), 1.1, (6, 10)), ((100, 30), 2, (200, 60))],
)
def test_output_size_is_ceil_of_scale_times_side(in_hw, scale, expected):
    assert output_size(in_hw, scale) == expected
    image = torch.zeros(1, *in_hw)
    assert tuple(imresize(image, scale=scale).shape[-2:]) == expected


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.7, 1.6, 2.5, 4])
def test_output_size_matches_math_ceil_for_many_sides(scale):
    for side in range(1, 60):
        product = scale * side
        expected = round(product) if abs(product - round(product)) < 1e-9 else math.ceil(product)
        assert output_size((side, side), scale) == (expected, expected)


def test_imresize_size_uses_per_axis_scales():
    image = torch.rand(3, 10, 20)
    out = imresize(image, size=(25, 30))
    assert out.shape == (3, 25, 30)
    # same as resizing each axis on its own
    rows = imresize(image, size=(25, 20))
    torch.testing.assert_close(imresize(rows, size=(25, 30)), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "scale", "window"),
    [
        (torch.uint8, 2.5, (0, 10, 0, 7)),
        (torch.uint8, 2.5, (7, 18, 20, 33)),
        (torch.uint8, 1 / 3, (1, 3, 2, 5)),
        (torch.float32, 3.0, (5, 6, 0, 39)),
        (torch.float32, 0.6, (0, 5, 3, 8)),
        (torch.uint16, 1.7, (2, 12, 4, 21)),
        (torch.float64, 4.0, (27, 28, 51, 52)),
    ],
)
def test_imresize_window_equals_crop_of_full_result(dtype, scale, window):
    torch.manual_seed(8)
    if dtype.is_floating_point:
        image = torch.rand(3, 7, 13, dtype=dtype)
    else:
        image = torch.randint(0, torch.iinfo(dtype).max, (3, 7, 13), dtype=torch.int64).to(dtype)
    full = imresize(image, scale=scale)
    y0, y1, x0, x1 = window
    part = imresize(image, scale=scale, window=window)
    assert part.dtype == dtype
    assert torch.equal(part, full[..., y0:y1, x0:x1])


def test_imresize_window_with_size_tiles_the_full_result():
    torch.manual_seed(9)
    image = torch.rand(3, 11, 9)
    size = (29, 23)
    full = imresize(image, size=size)
    bands = [imresize(image, size=size, window=(top, min(size[0], top + 8), 0, size[1])) for top in range(0, 29, 8)]
    assert torch.equal(torch.cat(bands, dim=1), full)


@pytest.mark.parametrize("window", [None, (3, 17, 5, 40)])
def test_imresize_float_output_of_integers_equals_resizing_them_as_floats(window):
    torch.manual_seed(9)
    image = torch.randint(0, 256, (3, 23, 31), dtype=torch.uint8)
    out = imresize(image, size=(41, 57), window=window, float_output=True)
    assert out.dtype == torch.float32
    expected = imresize(image.double(), size=(41, 57), window=window).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    assert float(out.max()) > 255  # no clamping or rounding: bicubic overshoots at edges


def test_imresize_uint16_keeps_type_and_range():
    torch.manual_seed(10)
    image = torch.randint(0, 65536, (1, 9, 8), dtype=torch.int64).to(torch.uint16)
    out = imresize(image, scale=2.5)
    assert out.dtype == torch.uint16
    assert out.shape == (1, 23, 20)
    values = out.to(torch.int64)
    assert int(values.min()) >= 0 and int(values.max()) <= 65535
    # a constant stays exactly constant, also near the top of the range (no overflow)
    for level in (0, 1234, 65535):
        flat = torch.full((2, 5, 6), level, dtype=torch.int64).to(torch.uint16)
        assert torch.equal(imresize(flat, scale=1.7).to(torch.int64), torch.full((2, 9, 11), level))


def test_imresize_uint16_rounds_like_float_reference():
    torch.manual_seed(11)
    image = torch.randint(0, 65536, (1, 12, 10), dtype=torch.int64)
    as_uint16 = imresize(image.to(torch.uint16), scale=0.5).to(torch.int64)
    # one pass per axis, rounded after each: redo it in float64 with explicit rounding
    rows = torch.floor(imresize(image.double(), size=(6, 10)).clamp(0, 65535) + 0.5)
    both = torch.floor(imresize(rows, size=(6, 5)).clamp(0, 65535) + 0.5)
    assert torch.equal(as_uint16, both.to(torch.int64))


def test_imresize_float_is_not_clamped_and_keeps_dtype():
    step = torch.zeros(1, 8, 8)
    step[..., 4:] = 1.0
    out = imresize(step, scale=2)
    assert out.dtype == torch.float32
    assert out.min() < 0 and out.max() > 1  # cubic overshoot is kept for float input
    assert imresize(step.double(), scale=2).dtype == torch.float64
    clipped = imresize((step * 255).to(torch.uint8), scale=2)
    assert clipped.min() == 0 and clipped.max() == 255


def test_imresize_uint8_matches_rounded_float_on_one_axis():
    torch.manual_seed(12)
    image = torch.randint(0, 256, (3, 1, 17), dtype=torch.uint8)
    out = imresize(image, size=(1, 40))
    reference = torch.floor(imresize(image.double(), size=(1, 40)).clamp(0, 255) + 0.5).to(torch.uint8)
    assert torch.equal(out, reference)


def test_imresize_upscale_reproduces_linear_ramp_inside():
    """Keys' cubic reproduces linear functions: away from the (mirrored) borders a ramp stays a ramp."""
    ramp = torch.arange(20, dtype=torch.float64)[None].expand(6, 20)[None]
    out = imresize(ramp, scale=2)
    x = torch.arange(1, 41, dtype=torch.float64)
    expected = x / 2 + 0.5 * (1 - 1 / 2) - 1  # output centre in 0-based input coordinates
    torch.testing.assert_close(out[0, 0, 4:-4], expected[4:-4])


def test_imresize_constant_image_stays_constant():
    for scale in (0.25, 0.5, 1 / 3, 1.5, 2, 3.3):
        out = imresize(torch.full((3, 13, 7), 0.375, dtype=torch.float64), scale=scale)
        torch.testing.assert_close(out, torch.full_like(out, 0.375))


def test_imresize_batched_equals_per_image():
    torch.manual_seed(13)
    images = torch.randint(0, 256, (2, 3, 9, 11), dtype=torch.uint8)
    batched = imresize(images, scale=0.5)
    for i in range(2):
        assert torch.equal(batched[i], imresize(images[i], scale=0.5))


def test_imresize_antialias_only_matters_when_shrinking():
    torch.manual_seed(14)
    image = torch.rand(1, 16, 16, dtype=torch.float64)
    assert torch.equal(imresize(image, scale=2, antialias=False), imresize(image, scale=2))
    assert not torch.allclose(imresize(image, scale=0.5, antialias=False), imresize(image, scale=0.5))


def test_contributions_weights_sum_to_one_and_indices_in_range():
    for in_len, out_len, scale in ((7, 18, 18 / 7), (13, 5, 5 / 13), (1, 3, 3.0), (4, 1, 0.25)):
        weights, indices = contributions(in_len, out_len, scale)
        assert weights.shape == indices.shape and weights.shape[0] == out_len
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(out_len, dtype=torch.float64))
        assert int(indices.min()) >= 0 and int(indices.max()) < in_len


def test_cubic_kernel_values():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5], dtype=torch.float64)
    expected = torch.tensor([1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625], dtype=torch.float64)
    torch.testing.assert_close(cubic(x), expected)


def test_imresize_two_megapixel_image():
    """A 2 MP photo-sized input goes through (speed is watched by the benchmarks, not asserted here)."""
    image = torch.full((3, 1200, 1700), 77, dtype=torch.uint8)
    image[:, ::7] = 200
    out = imresize(image, scale=0.5)
    assert out.shape == (3, 600, 850)
    assert out.dtype == torch.uint8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of scale or size"),
        ({"scale": 2.0, "size": (4, 4)}, "exactly one of scale or size"),
        ({"scale": 0.0}, "scale must be positive"),
        ({"scale": -1.5}, "scale must be positive"),
        ({"scale": float("nan")}, "scale must be positive"),
        ({"size": (0, 5)}, "output size must be positive"),
        ({"size": (5, -1)}, "output size must be positive"),
    ],
)
def test_imresize_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        imresize(torch.zeros(3, 4, 4), **kwargs)


def test_imresize_empty_image_raises():
    with pytest.raises(ValueError, match="empty image"):
        imresize(torch.zeros(3, 0, 4), scale=2)


@pytest.mark.parametrize("out_size", [(41, 30), (120, 90)])
def test_resize_band_stream_equals_a_whole_image_resize(out_size):
    """A closing bicubic fed in uneven bands, emitted in bands of 16 rows: the whole image's resize."""
    torch.manual_seed(11)
    image = torch.rand(3, 50, 37)
    cuts = [0, 7, 20, 21, 44, 50]
    bands = ((top, image[:, top:bottom]) for top, bottom in zip(cuts, cuts[1:], strict=False))
    out = list(resize_band_stream(bands, 50, out_size, rows_per_band=16))
    assert [top for top, _ in out] == list(range(0, out_size[0], 16))
    torch.testing.assert_close(torch.cat([band for _, band in out], dim=1),
                               imresize(image, size=out_size).clamp(0, 1), rtol=0, atol=1e-5)
