"""The upscaler: every image mode through the networks, bands top to bottom, uint8 vs float samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from model.engine import Upscaler
from model.picture import picture_from_array
from model.plan import UpscaleError
from tests.model.engine_support import CLEAN_AS, WHOLE_BUDGET, gradient

# --- every mode through the networks ------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 2.5, 3])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
def test_upscale_pil_modes(upscaler, mode, scale):
    channels = len(mode)
    array = gradient(12, 17, channels)
    image = Image.fromarray(array[:, :, 0] if channels == 1 else array, mode=mode)
    out = upscaler.upscale(image, scale=scale)
    plan = upscaler.plan((12, 17), scale=scale)
    assert isinstance(out, Image.Image)
    assert out.mode == mode
    assert (out.height, out.width) == plan.out_size


@pytest.mark.parametrize("scale", [2, 2.5])
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_upscale_alpha_transparent_and_opaque_regions_kept(upscaler, mode, scale):
    channels = len(mode)
    array = gradient(24, 24, channels)
    array[:, :, -1] = 0
    array[:, 12:, -1] = 255  # left half transparent, right half opaque
    out = np.asarray(upscaler.upscale(Image.fromarray(array, mode=mode), scale=scale))
    alpha = out[:, :, -1]
    w = alpha.shape[1]
    margin = math.ceil(2 * scale) + 1  # the bicubic kernel reaches 2 input pixels
    assert np.all(alpha[:, : w // 2 - margin] == 0)
    assert np.all(alpha[:, w // 2 + margin :] == 255)


def test_upscale_alpha_fully_transparent_stays_transparent(upscaler):
    array = gradient(9, 11, 4)
    array[:, :, 3] = 0
    out = upscaler.upscale(array, scale=3)
    assert out.shape == (27, 33, 4) and out.dtype == np.uint8
    assert np.all(out[:, :, 3] == 0)
    array[:, :, 3] = 255
    assert np.all(upscaler.upscale(array, scale=2.5)[:, :, 3] == 255)


def test_upscale_palette_with_transparency(upscaler):
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    indices = np.zeros((16, 16), np.uint8)
    indices[:, 8:] = 1 + (np.arange(8) % 3)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette)
    image.info["transparency"] = 0
    out = upscaler.upscale(image, scale=2)
    assert out.mode == "RGBA" and out.size == (32, 32)
    alpha = np.asarray(out)[:, :, 3]
    assert np.all(alpha[:, :12] == 0) and np.all(alpha[:, 20:] == 255)


def test_upscale_palette_without_transparency_is_rgb(upscaler):
    image = Image.fromarray(gradient(10, 10, 3)).convert("P")
    out = upscaler.upscale(image, scale=2)
    assert out.mode == "RGB" and out.size == (20, 20)


def test_upscale_sixteen_bit_gray_array(upscaler):
    array = gradient(10, 13, 1, np.uint16)[:, :, 0]
    assert array.max() > 255 * 200  # really uses 16 bits
    out = upscaler.upscale(array, scale=2.5)
    assert out.dtype == np.uint16
    assert out.shape == upscaler.plan((10, 13), scale=2.5).out_size
    assert out.max() > 255  # not squeezed to 8 bits


def test_upscale_sixteen_bit_gray_pil(upscaler):
    array = gradient(8, 9, 1, np.uint16)[:, :, 0]
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    out = upscaler.upscale(image, scale=2)
    assert out.mode == "I;16" and out.size == (18, 16)
    assert np.asarray(out).max() > 255


@pytest.mark.parametrize("scale", [2.5, 3])
@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 7)])
@pytest.mark.parametrize("channels", [3, 4])
def test_upscale_tiny_images(upscaler, height, width, scale, channels):
    array = gradient(height, width, channels)
    out = upscaler.upscale(array, scale=scale)
    assert out.shape == (*upscaler.plan((height, width), scale=scale).out_size, channels)
    assert out.dtype == np.uint8


def test_upscale_tiny_any_scale_path(upscaler):
    """2x3 -> 5x7: below ACS's smallest patch, the engine pads the pre-scaled image."""
    plan = upscaler.plan((2, 3), width=7)
    assert plan.models == ["as"] and plan.out_size == (5, 7)
    assert upscaler.upscale(gradient(2, 3, 3), width=7).shape == (5, 7, 3)


@pytest.mark.parametrize(("scale", "models"), [(6, ["x4", "as"]), (8, ["x4", "x2"]), (5.5, ["x4", "as"])])
def test_upscale_two_stage_plans(upscaler, scale, models):
    array = gradient(6, 7, 3)
    plan = upscaler.plan((6, 7), scale=scale)
    assert plan.models == models
    assert upscaler.upscale(array, scale=scale).shape == (*plan.out_size, 3)


def test_upscale_explicit_model_then_bicubic(upscaler):
    array = gradient(10, 12, 3)
    out = upscaler.upscale(array, scale=3, model="x4")
    assert out.shape == (30, 36, 3)


def test_upscale_gray_matches_channel_mean(upscaler):
    """L goes through the network as three equal channels and comes back as their mean."""
    gray = gradient(9, 10, 1)
    out_l = upscaler.upscale(gray[:, :, 0], scale=2).astype(np.float64)
    out_rgb = upscaler.upscale(np.repeat(gray, 3, axis=2), scale=2).astype(np.float64)
    assert out_l.shape == (18, 20)
    assert np.abs(out_l - out_rgb.mean(axis=2)).max() <= 1.0


def test_upscale_is_deterministic(upscaler):
    array = gradient(16, 20, 3)
    assert np.array_equal(upscaler.upscale(array, scale=2.5), upscaler.upscale(array, scale=2.5))


def test_picture_size_must_match_plan(upscaler):
    picture = picture_from_array(gradient(8, 8, 3))
    with pytest.raises(UpscaleError, match="plan is for"):
        next(upscaler.picture_bands(picture, upscaler.plan((9, 8), scale=2)))


# --- bands ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "model", "tile"), [(2, "auto", 32), (2.5, "auto", None), (3, "x4", 32),
                                                      (8, "auto", None)])
def test_picture_bands_top_to_bottom_concatenate_to_output(runner, natural, scale, model, tile):
    image = natural[:, :36]  # 96 rows: more than one 32 px tile window (32 + 2 x 28) holds
    up = Upscaler(runner, **CLEAN_AS, tile_size=tile, budget_bytes=WHOLE_BUDGET)
    picture = picture_from_array(image)
    plan = up.plan(picture.size, scale=scale, model=model)
    tops = []
    for top, band in up.color_bands(picture.color, plan):
        assert band.shape[0] == 3 and band.shape[2] == plan.out_size[1]
        tops.append((top, band.shape[1]))
    assert tops[0][0] == 0
    for (top, rows), (next_top, _) in zip(tops, tops[1:], strict=False):
        assert next_top == top + rows, "bands are contiguous, top to bottom"
    assert tops[-1][0] + tops[-1][1] == plan.out_size[0]
    bands = list(up.picture_bands(picture, plan))
    if tile is not None and scale == 2:
        assert len(bands) > 1
    whole = np.concatenate(bands, axis=0)
    assert whole.shape == (*plan.out_size, 3)
    assert np.array_equal(whole, up.upscale_picture(picture, plan))


def test_picture_bands_alpha_follows_color_bands(runner, natural):
    rgba = np.concatenate([natural[:, :40], np.full((96, 40, 1), 200, np.uint8)], axis=2)
    up = Upscaler(runner, **CLEAN_AS, tile_size=32)
    picture = picture_from_array(rgba)
    plan = up.plan(picture.size, scale=2)
    bands = list(up.picture_bands(picture, plan))
    assert len(bands) == 2 and all(b.shape[2] == 4 for b in bands)
    assert np.all(np.concatenate(bands)[:, :, 3] == 200)


# --- regression: short unaligned side on the tiled any-scale path ------------------------------


def test_upscale_any_scale_tiled_with_short_unaligned_side(runner):
    up = Upscaler(runner, **CLEAN_AS, tile_size=32)
    out = up.upscale(gradient(41, 104, 3), scale=2.5)  # -> 103 x 260: 103 rows are not a multiple of 4
    assert out.shape == (103, 260, 3)


@pytest.mark.parametrize(("scale", "tile", "channels"), [(2, 32, 3), (2.5, None, 4), (2.5, 32, 3), (6, 32, 4)])
def test_uint8_samples_give_the_same_result_as_float_samples(runner, natural, scale, tile, channels):
    """8-bit pictures keep uint8 samples; the engine converts each window it reads, to the same result."""
    image = natural[:40, :36]
    if channels == 4:
        image = np.concatenate([image, image[:, :, :1]], axis=2)
    up = Upscaler(runner, **CLEAN_AS, tile_size=tile, budget_bytes=WHOLE_BUDGET)
    samples = picture_from_array(image)
    floats = picture_from_array(image.astype(np.float32) / 255)
    assert samples.color.dtype == torch.uint8 and floats.color.dtype == torch.float32
    plan = up.plan(samples.size, scale)
    assert np.array_equal(up.upscale_picture(samples, plan), up.upscale_picture(floats, plan))
