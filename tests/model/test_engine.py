"""The upscaler: scale policy, every image mode, tiles vs whole image, and band streaming."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from model.backends import TorchRunner
from model.engine import (
    AS_CONTEXT,
    Plan,
    Stage,
    UpscaleError,
    Upscaler,
    plan_upscale,
    resize_band_stream,
    resize_unit,
    target_size,
    tile_core,
)
from model.imageio import picture_from_array, unit_float
from model.imdn import contrast_from_moments
from model.resize import imresize
from model.tiling import IMDN_CONTEXT

WHOLE_BUDGET = 2**34  # big enough that every test image is one tile


@pytest.fixture(scope="module")
def runner(random_models):
    return TorchRunner(random_models)


@pytest.fixture(scope="module")
def upscaler(runner):
    return Upscaler(runner, budget_bytes=WHOLE_BUDGET)


class SpyRunner:
    """Delegates to a runner and records every network call's batch shape and CCA statistics."""

    def __init__(self, inner: TorchRunner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, tuple[int, ...], torch.Tensor | None]] = []

    def __call__(self, name, batch, cca_contrast=None):
        self.calls.append((name, tuple(batch.shape), None if cca_contrast is None else cca_contrast.clone()))
        return self.inner(name, batch, cca_contrast)

    def cca_moments(self, name, windows, mask, cca_contrast=None):
        return self.inner.cca_moments(name, windows, mask, cca_contrast)

    def run_part(self, name, kind, block, *inputs):
        self.calls.append((f"{name}:{kind}{block}", tuple(inputs[0].shape), None))
        return self.inner.run_part(name, kind, block, *inputs)


# --- planning ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "out_size", "stages"),
    [
        ({"scale": 2}, (40, 100), [("x2", (40, 100))]),
        ({"scale": 3}, (60, 150), [("x3", (60, 150))]),
        ({"scale": 4}, (80, 200), [("x4", (80, 200))]),
        ({"scale": 2.0}, (40, 100), [("x2", (40, 100))]),
        ({"scale": 2.5}, (50, 125), [("as", (50, 125))]),
        ({"scale": 1.5}, (30, 75), [("as", (30, 75))]),
        ({"scale": 6}, (120, 300), [("x4", (80, 200)), ("as", (120, 300))]),
        ({"scale": 8}, (160, 400), [("x4", (80, 200)), ("x2", (160, 400))]),
        ({"scale": 5}, (100, 250), [("x4", (80, 200)), ("as", (100, 250))]),
        ({"scale": 3, "model": "x4"}, (60, 150), [("x4", (80, 200)), (None, (60, 150))]),
        ({"scale": 2.5, "model": "x2"}, (50, 125), [("x2", (40, 100)), (None, (50, 125))]),
        ({"scale": 3, "model": "x3"}, (60, 150), [("x3", (60, 150))]),
        ({"scale": 2, "model": "as"}, (40, 100), [("as", (40, 100))]),
        ({"width": 200}, (80, 200), [("x4", (80, 200))]),
        ({"height": 60}, (60, 150), [("x3", (60, 150))]),
        ({"width": 75}, (30, 75), [("as", (30, 75))]),
        ({"width": 100, "height": 30}, (30, 100), [("as", (30, 100))]),
    ],
)
def test_plan_upscale_policy(request_, out_size, stages):
    plan = plan_upscale((20, 50), **request_)
    assert plan.in_size == (20, 50)
    assert plan.out_size == out_size
    assert [(s.model, s.size) for s in plan.stages] == stages
    assert plan.stages[-1].size == out_size
    assert plan.models == [m for m, _ in stages if m]


def test_plan_scale_property():
    plan = plan_upscale((20, 50), scale=2.5)
    assert plan.scale == (2.5, 2.5)
    assert Plan((2, 4), (3, 8), (Stage("as", (3, 8)),)).scale == (1.5, 2.0)


@pytest.mark.parametrize(("size", "request_", "expected"), [
    ((20, 50), {"width": 125}, (50, 125)),
    ((20, 50), {"height": 30}, (30, 75)),
    ((33, 17), {"width": 51}, (99, 51)),
    ((33, 17), {"height": 66}, (66, 34)),
    ((7, 13), {"scale": 3}, (21, 39)),
    ((3, 7), {"scale": 2.5}, (8, 18)),
])
def test_target_size_keeps_aspect(size, request_, expected):
    request_ = {"scale": None, "width": None, "height": None} | request_
    assert target_size(size, max_scale=8.0, **request_) == expected


@pytest.mark.parametrize(("request_", "message"), [
    ({"scale": 1}, "greater than 1"),
    ({"scale": 0.5}, "greater than 1"),
    ({"scale": -2}, "greater than 1"),
    ({"scale": 0}, "greater than 1"),
    ({"scale": math.nan}, "greater than 1"),
    ({"scale": math.inf}, "greater than 1"),
    ({"scale": 8.5}, "above the maximum"),
    ({"scale": 2, "width": 100}, "not both"),
    ({"scale": 2, "height": 100}, "not both"),
    ({}, "give a scale or a target"),
    ({"width": 0}, "width must be a positive"),
    ({"height": -5}, "height must be a positive"),
    ({"width": 49}, "smaller than the input"),
    ({"width": 100, "height": 19}, "smaller than the input"),
    ({"width": 50, "height": 20}, "nothing to upscale"),
    ({"width": 50}, "nothing to upscale"),
    ({"width": 500}, "more than 8.0x"),
    ({"width": 100, "height": 170}, "more than 8.0x"),
    ({"scale": 2, "model": "x5"}, "unknown model"),
])
def test_plan_upscale_errors(request_, message):
    with pytest.raises(UpscaleError, match=message):
        plan_upscale((20, 50), **request_)


@pytest.mark.parametrize(("request_", "target"), [
    ({"width": 100}, "100x96 (the aspect ratio kept)"),
    ({"height": 96}, "100x96 (the aspect ratio kept)"),
    ({"width": 400}, "400x384 (the aspect ratio kept)"),
    ({"width": 100, "height": 600}, "100x600 is"),
])
def test_too_small_target_names_the_size_really_produced(request_, target):
    # A width-only request keeps the aspect ratio: the message must not say 100x480 for a 500x480 input.
    with pytest.raises(UpscaleError, match=rf"target {target.replace('(', '[(]').replace(')', '[)]')} .*"
                                           r"smaller than the input 500x480"):
        plan_upscale((480, 500), **request_)


def test_plan_upscale_custom_max_scale():
    assert plan_upscale((10, 10), scale=12, max_scale=16).out_size == (120, 120)
    with pytest.raises(UpscaleError, match="above the maximum of 3"):
        plan_upscale((10, 10), scale=4, max_scale=3)


def test_upscale_error_is_value_error():
    assert issubclass(UpscaleError, ValueError)


def test_tile_core_multiple_of_4_and_grows_with_budget():
    small = tile_core("x2", 2**20, IMDN_CONTEXT)
    large = tile_core("x2", 2**30, IMDN_CONTEXT)
    assert small == 32  # floor
    assert large % 4 == 0 and large > small
    assert tile_core("as", 2**30, AS_CONTEXT) % 4 == 0


# --- every mode through the networks ------------------------------------------------------


def _gradient(height: int, width: int, channels: int, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 3 + y * 5) % 97 / 96
    planes = [base, base[::-1], base[:, ::-1], 1 - base][:channels]
    return (np.stack(planes, axis=-1) * top).round().astype(dtype)


@pytest.mark.parametrize("scale", [2, 2.5, 3])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA"])
def test_upscale_pil_modes(upscaler, mode, scale):
    channels = len(mode)
    array = _gradient(12, 17, channels)
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
    array = _gradient(24, 24, channels)
    array[:, :, -1] = 0
    array[:, 12:, -1] = 255  # left half transparent, right half opaque
    out = np.asarray(upscaler.upscale(Image.fromarray(array, mode=mode), scale=scale))
    alpha = out[:, :, -1]
    w = alpha.shape[1]
    margin = math.ceil(2 * scale) + 1  # the bicubic kernel reaches 2 input pixels
    assert np.all(alpha[:, : w // 2 - margin] == 0)
    assert np.all(alpha[:, w // 2 + margin :] == 255)


def test_upscale_alpha_fully_transparent_stays_transparent(upscaler):
    array = _gradient(9, 11, 4)
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
    image = Image.fromarray(_gradient(10, 10, 3)).convert("P")
    out = upscaler.upscale(image, scale=2)
    assert out.mode == "RGB" and out.size == (20, 20)


def test_upscale_sixteen_bit_gray_array(upscaler):
    array = _gradient(10, 13, 1, np.uint16)[:, :, 0]
    assert array.max() > 255 * 200  # really uses 16 bits
    out = upscaler.upscale(array, scale=2.5)
    assert out.dtype == np.uint16
    assert out.shape == upscaler.plan((10, 13), scale=2.5).out_size
    assert out.max() > 255  # not squeezed to 8 bits


def test_upscale_sixteen_bit_gray_pil(upscaler):
    array = _gradient(8, 9, 1, np.uint16)[:, :, 0]
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    out = upscaler.upscale(image, scale=2)
    assert out.mode == "I;16" and out.size == (18, 16)
    assert np.asarray(out).max() > 255


@pytest.mark.parametrize("scale", [2.5, 3])
@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 7)])
@pytest.mark.parametrize("channels", [3, 4])
def test_upscale_tiny_images(upscaler, height, width, scale, channels):
    array = _gradient(height, width, channels)
    out = upscaler.upscale(array, scale=scale)
    assert out.shape == (*upscaler.plan((height, width), scale=scale).out_size, channels)
    assert out.dtype == np.uint8


def test_upscale_tiny_any_scale_path(upscaler):
    """2x3 -> 5x7: below ACS's smallest patch, the engine pads the pre-scaled image."""
    plan = upscaler.plan((2, 3), width=7)
    assert plan.models == ["as"] and plan.out_size == (5, 7)
    assert upscaler.upscale(_gradient(2, 3, 3), width=7).shape == (5, 7, 3)


@pytest.mark.parametrize(("scale", "models"), [(6, ["x4", "as"]), (8, ["x4", "x2"]), (5.5, ["x4", "as"])])
def test_upscale_two_stage_plans(upscaler, scale, models):
    array = _gradient(6, 7, 3)
    plan = upscaler.plan((6, 7), scale=scale)
    assert plan.models == models
    assert upscaler.upscale(array, scale=scale).shape == (*plan.out_size, 3)


def test_upscale_explicit_model_then_bicubic(upscaler):
    array = _gradient(10, 12, 3)
    out = upscaler.upscale(array, scale=3, model="x4")
    assert out.shape == (30, 36, 3)


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


def test_upscale_gray_matches_channel_mean(upscaler):
    """L goes through the network as three equal channels and comes back as their mean."""
    gray = _gradient(9, 10, 1)
    out_l = upscaler.upscale(gray[:, :, 0], scale=2).astype(np.float64)
    out_rgb = upscaler.upscale(np.repeat(gray, 3, axis=2), scale=2).astype(np.float64)
    assert out_l.shape == (18, 20)
    assert np.abs(out_l - out_rgb.mean(axis=2)).max() <= 1.0


def test_upscale_is_deterministic(upscaler):
    array = _gradient(16, 20, 3)
    assert np.array_equal(upscaler.upscale(array, scale=2.5), upscaler.upscale(array, scale=2.5))


def test_picture_size_must_match_plan(upscaler):
    picture = picture_from_array(_gradient(8, 8, 3))
    with pytest.raises(UpscaleError, match="plan is for"):
        next(upscaler.picture_bands(picture, upscaler.plan((9, 8), scale=2)))


# --- tiles vs the whole image ---------------------------------------------------------


@pytest.fixture(scope="module")
def natural(make_image):
    return make_image(96, 96, seed=1)


@pytest.mark.parametrize("refine", [True, False])
def test_tiled_x2_matches_whole_image(runner, upscaler, natural, refine):
    tiled = Upscaler(runner, tile_core_override=32, refine_stats=refine)
    a = tiled.upscale(natural, scale=2).astype(np.int16)
    b = upscaler.upscale(natural, scale=2).astype(np.int16)
    assert a.shape == b.shape == (192, 192, 3)
    close = np.abs(a - b) <= 1
    assert close.mean() >= 0.999, f"only {close.mean():.4%} within 1/255"


def test_tiled_runs_with_whole_image_statistics(runner, natural, random_models):
    """Every tile is gated by the whole image's CCA statistics (not its own)."""
    spy = SpyRunner(runner)
    tiled = Upscaler(spy, tile_core_override=32, max_batch=4)
    picture = picture_from_array(natural)
    tiled.upscale_picture(picture, tiled.plan((96, 96), scale=2))
    # 2 x 2 balanced tiles: 48 px cores in 76 px windows (context on the inner side only); a row is one batch.
    assert len(spy.calls) == 2
    whole = contrast_from_moments(
        random_models["x2"].cca_moments(unit_float(picture.color)[None], torch.ones(1, 1, 96, 96, dtype=torch.bool))
    ).float()
    for name, shape, contrast in spy.calls:
        assert name == "x2" and shape == (2, 3, 76, 76)
        assert contrast is not None and contrast.shape == (shape[0], 6, 64)
        torch.testing.assert_close(contrast.float(), whole.expand(shape[0], -1, -1), rtol=1e-4, atol=1e-5)


def test_whole_image_runs_once_without_statistics(runner, natural):
    spy = SpyRunner(runner)
    Upscaler(spy, budget_bytes=WHOLE_BUDGET).upscale(natural, scale=2)
    assert [(name, shape, contrast) for name, shape, contrast in spy.calls] == [("x2", (1, 3, 96, 96), None)]


def test_acs_runs_four_patches_in_one_batch(runner):
    spy = SpyRunner(runner)
    out = Upscaler(spy, budget_bytes=WHOLE_BUDGET).upscale(_gradient(7, 13, 3), scale=2.5)
    assert out.shape == (18, 33, 3)  # 17.5 -> 18, 32.5 -> 33 (halves round up)
    assert [(name, shape) for name, shape, _ in spy.calls] == [("as", (4, 3, 12, 20))]


class OutOfMemoryRunner(SpyRunner):
    """Fails like the CPU allocator for any batch with more than `max_pixels` input pixels per window."""

    def __init__(self, inner: TorchRunner, max_pixels: int) -> None:
        super().__init__(inner)
        self.max_pixels = max_pixels

    def __call__(self, name, batch, cca_contrast=None):
        if batch.shape[2] * batch.shape[3] > self.max_pixels:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")
        return super().__call__(name, batch, cca_contrast)


def test_out_of_memory_whole_image_retries_in_tiles(runner, upscaler, make_image):
    """The budget says one 128 px tile; the runner cannot take it; the engine redoes it in 64 px cores."""
    image = make_image(128, 128, seed=4)
    oom = OutOfMemoryRunner(runner, max_pixels=128 * 128 - 1)
    out = Upscaler(oom, budget_bytes=100 * 2**20).upscale(image, scale=2).astype(np.int16)
    window = 64 + IMDN_CONTEXT  # two balanced 64 px cores per axis, each with context on its inner side
    assert [shape for _, shape, _ in oom.calls] == [(2, 3, window, window)] * 2
    assert all(contrast is not None for _, _, contrast in oom.calls)  # tiles share whole-image statistics
    expected = upscaler.upscale(image, scale=2).astype(np.int16)
    assert out.shape == expected.shape == (256, 256, 3)
    assert (np.abs(out - expected) <= 1).mean() >= 0.999


def test_other_runner_errors_are_not_retried(runner, natural):
    class Broken(SpyRunner):
        def __call__(self, name, batch, cca_contrast=None):
            raise RuntimeError("something else broke")

    with pytest.raises(RuntimeError, match="something else broke"):
        Upscaler(Broken(runner)).upscale(natural[:16, :16], scale=2)


# --- bands ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "model", "tile"), [(2, "auto", 32), (2.5, "auto", None), (3, "x4", 32),
                                                      (8, "auto", None)])
def test_picture_bands_top_to_bottom_concatenate_to_output(runner, natural, scale, model, tile):
    image = natural[:, :36]  # 96 rows: more than one 32 px tile window (32 + 2 x 28) holds
    up = Upscaler(runner, tile_core_override=tile, budget_bytes=WHOLE_BUDGET)
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
    up = Upscaler(runner, tile_core_override=32)
    picture = picture_from_array(rgba)
    plan = up.plan(picture.size, scale=2)
    bands = list(up.picture_bands(picture, plan))
    assert len(bands) == 2 and all(b.shape[2] == 4 for b in bands)
    assert np.all(np.concatenate(bands)[:, :, 3] == 200)


# --- regression: short unaligned side on the tiled any-scale path ------------------------------


def test_upscale_any_scale_tiled_with_short_unaligned_side(runner):
    up = Upscaler(runner, tile_core_override=32)
    out = up.upscale(_gradient(41, 104, 3), scale=2.5)  # -> 103 x 260: 103 rows are not a multiple of 4
    assert out.shape == (103, 260, 3)


@pytest.mark.parametrize(("scale", "tile", "channels"), [(2, 32, 3), (2.5, None, 4), (2.5, 32, 3), (6, 32, 4)])
def test_uint8_samples_give_the_same_result_as_float_samples(runner, natural, scale, tile, channels):
    """8-bit pictures keep uint8 samples; the engine converts each window it reads, to the same result."""
    image = natural[:40, :36]
    if channels == 4:
        image = np.concatenate([image, image[:, :, :1]], axis=2)
    up = Upscaler(runner, tile_core_override=tile, budget_bytes=WHOLE_BUDGET)
    samples = picture_from_array(image)
    floats = picture_from_array(image.astype(np.float32) / 255)
    assert samples.color.dtype == torch.uint8 and floats.color.dtype == torch.float32
    plan = up.plan(samples.size, scale)
    assert np.array_equal(up.upscale_picture(samples, plan), up.upscale_picture(floats, plan))


# --- IMDN_AS in parts: past the budget for one pass, with room for its feature maps -----------------

# 192x160 output: one pass would need 7.4 MB (190x157: 7.2 MB); in parts, four maps (the head's output
# held for the tail) take 1 MB and the bands the rest: 20 feature rows (of 48) for head and tail, 32 for
# the blocks, so every part meets a band border. With 4.71-4.93 MiB, three maps leave room for the bands
# and four do not.
PARTS_BUDGET = 6 * 2**20
THREE_MAPS_BUDGET = 4900 * 2**10


def test_any_scale_in_parts_equals_the_whole_image(runner, make_image):
    image = make_image(80, 64, seed=5)
    spy = SpyRunner(runner)
    out = Upscaler(spy, budget_bytes=PARTS_BUDGET).upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET).upscale(image, width=160, height=192, model="as")
    assert out.shape == expected.shape == (192, 160, 3)
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2  # the tiles' bar (issue 3), met by the parts
    names = [name for name, _, _ in spy.calls]
    assert names == (["as:head0"] * 3 + [f"as:block{b}" for b in range(6) for _ in range(2)]
                     + ["as:tail_held0"] * 3)
    assert [shape[2] for name, shape, _ in spy.calls if name == "as:block1"] == [32 + 4, 16 + 4]
    head_rows = [shape[2] for name, shape, _ in spy.calls if name == "as:head0"]
    assert head_rows == [4 * (20 + 1), 4 * (20 + 2), 4 * (8 + 1)]


def test_any_scale_in_parts_without_room_for_the_head_recomputes_it(runner, make_image):
    """With room for three maps only, the tail recomputes the head from the pre-scaled image."""
    image = make_image(80, 64, seed=5)
    spy = SpyRunner(runner)
    out = Upscaler(spy, budget_bytes=THREE_MAPS_BUDGET).upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET).upscale(image, width=160, height=192, model="as")
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2
    tails = [name for name, _, _ in spy.calls if "tail" in name]
    assert tails == ["as:tail0"] * 3  # 48 feature rows in bands of 16


def test_any_scale_in_parts_plans_within_the_parts_budget(runner, make_image):
    """The same budget for one pass and tiles, with more room for the parts (the service gives them ONNX
    Runtime's arena cap): the head's output is held, and the bands are those of that larger budget."""
    image = make_image(80, 64, seed=5)
    spy = SpyRunner(runner)
    up = Upscaler(spy, budget_bytes=THREE_MAPS_BUDGET, parts_budget_bytes=PARTS_BUDGET)
    out = up.upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET).upscale(image, width=160, height=192, model="as")
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2
    assert [name for name, _, _ in spy.calls if "tail" in name] == ["as:tail_held0"] * 3  # bands of 20
    assert up.budget_bytes == THREE_MAPS_BUDGET  # tiles and the one-pass limit keep the budget


def test_any_scale_in_parts_runs_bands_in_windows(runner, make_image):
    """Windows of at most 12x16 own feature pixels: 40 feature columns in 3 balanced stripes, each read with
    its context on the sides away from the border; the result is still the whole image's."""
    image = make_image(80, 64, seed=5)
    spy = SpyRunner(runner)
    up = Upscaler(spy, budget_bytes=PARTS_BUDGET, part_window=(12, 16))
    out = up.upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET).upscale(image, width=160, height=192, model="as")
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2
    block1 = [shape for name, shape, _ in spy.calls if name == "as:block1"]
    assert [shape[3] for shape in block1] == [13 + 4, 13 + 8, 14 + 4] * 4  # 48 rows: 4 bands of 12
    assert [shape[2] for shape in block1] == [12 + 4] * 3 + [12 + 8] * 6 + [12 + 4] * 3
    tail = [shape for name, shape, _ in spy.calls if name == "as:tail_held0"]
    assert [shape[3] for shape in tail[:3]] == [13 + 2, 13 + 4, 14 + 2]


def test_any_scale_in_parts_without_windows_runs_whole_bands(runner, make_image):
    """part_window=None (a GPU): one call per band, its whole width."""
    spy = SpyRunner(runner)
    Upscaler(spy, budget_bytes=PARTS_BUDGET, part_window=None).upscale(make_image(80, 64, seed=5), width=160,
                                                                       height=192, model="as")
    assert [shape[2:] for name, shape, _ in spy.calls if name == "as:block1"] == [(32 + 4, 40), (16 + 4, 40)]


def test_any_scale_in_parts_pads_sides_that_are_not_multiples_of_4(runner, make_image):
    """190x157: the pre-scaled image is padded with its edge pixels to 192x160, and the result cropped."""
    image = make_image(76, 63, seed=6)
    up = Upscaler(runner, budget_bytes=PARTS_BUDGET)
    picture = picture_from_array(image)
    plan = up.plan(picture.size, width=157, height=190, model="as")
    bands = [band for _, band in up.color_bands(picture.color, plan)]
    out = torch.cat(bands, dim=1)
    prescaled = resize_unit(picture.color, (190, 157))
    padded = torch.nn.functional.pad(prescaled[None], (0, 3, 0, 2), mode="replicate")
    expected = runner("as", padded)[0, :, :190, :157].clamp(0, 1)
    assert out.shape == (3, 190, 157)
    assert (torch.abs(out - expected) * 255).max() <= 2


def test_any_scale_in_parts_without_memory_falls_back_to_tiles(runner, make_image):
    class NoMemoryForParts(SpyRunner):
        def run_part(self, name, kind, block, *inputs):
            raise MemoryError("no room for the feature maps")

    image = make_image(80, 64, seed=5)
    spy = NoMemoryForParts(runner)
    out = Upscaler(spy, budget_bytes=PARTS_BUDGET).upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET).upscale(image, width=160, height=192, model="as")
    assert out.shape == (192, 160, 3)
    assert spy.calls and all(name == "as" for name, _, _ in spy.calls)  # network calls: the tiled path
    assert (np.abs(out.astype(np.int16) - expected.astype(np.int16)) <= 1).mean() >= 0.999
