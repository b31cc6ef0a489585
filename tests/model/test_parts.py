"""IMDN_AS in parts: equal to the whole image, within its budget, in windows, padded, falling back to tiles."""

from __future__ import annotations

import numpy as np
import torch

from model.engine import Upscaler
from model.parts import (
    MIN_PART_ROWS,
    PART_WINDOW,
    band_rows_for,
    feature_size,
    part_band_rows,
    part_maps_bytes,
    part_stripes,
)
from model.picture import picture_from_array
from model.resize import resize_unit
from tests.model.engine_support import CLEAN_AS, WHOLE_BUDGET, SpyRunner

# --- IMDN_AS in parts: past the budget for one pass, with room for its feature maps -----------------

# 192x160 output: one pass would need 7.4 MB (190x157: 7.2 MB); in parts, four maps (the head's output
# held for the tail) take 1 MB and the bands the rest: 20 feature rows (of 48) for head and tail, 32 for
# the blocks, so every part meets a band border. With 4.71-4.93 MiB, three maps leave room for the bands
# and four do not.
PARTS_BUDGET = 6 * 2**20
THREE_MAPS_BUDGET = 4900 * 2**10


# --- planning: pure functions of the size, the budget and the window ----------------------------------


def test_part_stripes_cover_the_feature_columns_evenly():
    stripes = part_stripes((4 * 300, 4 * 1000), PART_WINDOW)
    assert stripes[0][0] == 0 and stripes[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(stripes, stripes[1:], strict=False))
    widths = [stop - first for first, stop in stripes]
    assert max(widths) <= PART_WINDOW[1] and max(widths) - min(widths) <= 1
    assert part_stripes((4 * 300, 4 * 1000), None) == [(0, 1000)]  # whole bands


def test_band_rows_within_the_window_and_the_budget():
    size = (192, 160)
    rows, _ = feature_size(size)
    plan = band_rows_for(size, PARTS_BUDGET, (12, 16))
    assert set(plan) == {"head", "block", "tail"}
    assert all(band == 12 for band in plan.values())  # never more rows than the window
    # Without windows the budget decides (see PARTS_BUDGET); a fourth map leaves less for the bands.
    assert band_rows_for(size, PARTS_BUDGET, None, "tail_held") == {"head": 20, "block": 32, "tail_held": 20}
    assert band_rows_for(size, PARTS_BUDGET, None) == {"head": 21, "block": 33, "tail": 21}
    assert all(MIN_PART_ROWS <= band <= rows for band in band_rows_for(size, PARTS_BUDGET, None).values())
    assert band_rows_for(size, part_maps_bytes(size), None) == {}  # the maps alone fill it: no bands


def test_part_band_rows_holds_the_head_where_a_fourth_map_fits():
    size = (192, 160)
    assert "tail_held" in part_band_rows(size, PARTS_BUDGET, None)
    three_maps = part_band_rows(size, THREE_MAPS_BUDGET, None)
    assert "tail" in three_maps and "tail_held" not in three_maps
    assert part_band_rows(size, part_maps_bytes(size), None) == {}


# --- running: equal to the whole image ----------------------------------------------------------------


def test_any_scale_in_parts_equals_the_whole_image(runner, make_image):
    image = make_image(80, 64, seed=5)
    spy = SpyRunner(runner)
    out = Upscaler(spy, **CLEAN_AS, budget_bytes=PARTS_BUDGET).upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET, **CLEAN_AS).upscale(image, width=160, height=192, model="as")
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
    out = Upscaler(spy, **CLEAN_AS, budget_bytes=THREE_MAPS_BUDGET).upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET, **CLEAN_AS).upscale(image, width=160, height=192, model="as")
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2
    tails = [name for name, _, _ in spy.calls if "tail" in name]
    assert tails == ["as:tail0"] * 3  # 48 feature rows in bands of 16


def test_any_scale_in_parts_plans_within_the_parts_budget(runner, make_image):
    """The same budget for one pass and tiles, with more room for the parts (the service gives them ONNX
    Runtime's arena cap): the head's output is held, and the bands are those of that larger budget."""
    image = make_image(80, 64, seed=5)
    spy = SpyRunner(runner)
    up = Upscaler(spy, **CLEAN_AS, budget_bytes=THREE_MAPS_BUDGET, parts_budget_bytes=PARTS_BUDGET)
    out = up.upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET, **CLEAN_AS).upscale(image, width=160, height=192, model="as")
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2
    assert [name for name, _, _ in spy.calls if "tail" in name] == ["as:tail_held0"] * 3  # bands of 20
    assert up.budget_bytes == THREE_MAPS_BUDGET  # tiles and the one-pass limit keep the budget


def test_any_scale_in_parts_runs_bands_in_windows(runner, make_image):
    """Windows of at most 12x16 own feature pixels: 40 feature columns in 3 balanced stripes, each read with
    its context on the sides away from the border; the result is still the whole image's."""
    image = make_image(80, 64, seed=5)
    spy = SpyRunner(runner)
    up = Upscaler(spy, **CLEAN_AS, budget_bytes=PARTS_BUDGET, part_window=(12, 16))
    out = up.upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET, **CLEAN_AS).upscale(image, width=160, height=192, model="as")
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
    up = Upscaler(spy, **CLEAN_AS, budget_bytes=PARTS_BUDGET, part_window=None)
    up.upscale(make_image(80, 64, seed=5), width=160, height=192, model="as")
    assert [shape[2:] for name, shape, _ in spy.calls if name == "as:block1"] == [(32 + 4, 40), (16 + 4, 40)]


def test_any_scale_in_parts_pads_sides_that_are_not_multiples_of_4(runner, make_image):
    """190x157: the pre-scaled image is padded with its edge pixels to 192x160, and the result cropped."""
    image = make_image(76, 63, seed=6)
    up = Upscaler(runner, **CLEAN_AS, budget_bytes=PARTS_BUDGET)
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
    out = Upscaler(spy, **CLEAN_AS, budget_bytes=PARTS_BUDGET).upscale(image, width=160, height=192, model="as")
    expected = Upscaler(runner, budget_bytes=WHOLE_BUDGET, **CLEAN_AS).upscale(image, width=160, height=192, model="as")
    assert out.shape == (192, 160, 3)
    assert spy.calls and all(name == "as" for name, _, _ in spy.calls)  # network calls: the tiled path
    assert (np.abs(out.astype(np.int16) - expected.astype(np.int16)) <= 1).mean() >= 0.999
