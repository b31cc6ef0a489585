"""Tile geometry: ACS patches, overlapping tile plans and stratified samples (pure integer functions)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.tiling import (
    IMDN_CONTEXT,
    Span,
    Tile,
    acs_patch_side,
    acs_tiles,
    plan_grid,
    plan_samples,
    plan_tiles,
)

HYPOTHESIS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


def _coverage(tiles: list[Tile], height: int, width: int) -> np.ndarray:
    """How many cores own each pixel."""
    counts = np.zeros((height, width), np.int32)
    for t in tiles:
        counts[t.core_rows.start : t.core_rows.stop, t.core_cols.start : t.core_cols.stop] += 1
    return counts


def _inside(inner: Span, outer: Span) -> bool:
    return outer.start <= inner.start and inner.stop <= outer.stop and inner.size > 0


# --- ACS --------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "expected"), [(4, 4), (7, 4), (8, 8), (13, 8), (14, 8), (15, 8), (16, 12),
                                                (999, 500), (1000, 504), (1001, 504)])
def test_acs_patch_side_equations(side, expected):
    assert acs_patch_side(side) == expected
    assert acs_patch_side(side) % 4 == 0


def test_acs_patch_side_larger_padding():
    assert acs_patch_side(13, pad=8) == 12
    assert acs_patch_side(1000, pad=8) == 508


@pytest.mark.parametrize("pad", [0, 2, 6, -4])
def test_acs_patch_side_bad_padding_raises(pad):
    with pytest.raises(ValueError, match="4k"):
        acs_patch_side(16, pad)


@pytest.mark.parametrize(("height", "width"), [(7, 13), (1001, 999), (1000, 1000), (4, 4), (8, 9), (13, 7), (6, 5)])
def test_acs_tiles_geometry(height, width):
    tiles = acs_tiles(height, width)
    assert len(tiles) == 4
    sizes = {(t.rows.size, t.cols.size) for t in tiles}
    assert len(sizes) == 1, "all four patches have the same size"
    ph, pw = sizes.pop()
    assert ph % 4 == 0 and pw % 4 == 0
    assert (ph, pw) == (acs_patch_side(height), acs_patch_side(width))
    for t in tiles:
        assert _inside(t.rows, Span(0, height)) and _inside(t.cols, Span(0, width))
        assert _inside(t.core_rows, t.rows) and _inside(t.core_cols, t.cols)
    assert np.all(_coverage(tiles, height, width) == 1), "cores partition the image exactly"
    # TL, TR, BL, BR, split at floor(side / 2)
    tl, tr, bl, br = tiles
    assert (tl.rows.start, tl.cols.start, br.rows.stop, br.cols.stop) == (0, 0, height, width)
    assert tl.core_rows == Span(0, height // 2) and br.core_cols == Span(width // 2, width)
    assert tr.core_rows == tl.core_rows and bl.core_cols == tl.core_cols


@pytest.mark.parametrize(("height", "width"), [(1, 1), (3, 7), (7, 3), (2, 40), (40, 1)])
def test_acs_tiles_too_small_raises(height, width):
    """The patch is at least 4 px: smaller sides are the caller's to pad (the engine does)."""
    with pytest.raises(ValueError, match="smaller than its ACS patch"):
        acs_tiles(height, width)


def test_acs_tiles_work_for_every_side_from_4():
    for side in range(4, 64):
        tiles = acs_tiles(side, side + 3)
        assert np.all(_coverage(tiles, side, side + 3) == 1)


# --- plan_tiles -------------------------------------------------------------------------


def _check_plan(height: int, width: int, core: int, context: int, align: int) -> None:
    rows = plan_tiles(height, width, core, context, align)
    tiles = [t for row in rows for t in row]
    assert np.all(_coverage(tiles, height, width) == 1), "cores partition the image"
    assert len({(t.rows.size, t.cols.size) for t in tiles}) == 1, "one window size for all tiles"
    for row in rows:
        assert len({t.core_rows for t in row}) == 1 and len({t.rows for t in row}) == 1
        assert [t.core_cols.start for t in row] == sorted(t.core_cols.start for t in row)
    assert [row[0].core_rows.start for row in rows] == sorted(row[0].core_rows.start for row in rows)
    for t in tiles:
        for window, owned, length in ((t.rows, t.core_rows, height), (t.cols, t.core_cols, width)):
            assert _inside(window, Span(0, length))
            assert _inside(owned, window), f"core {owned} outside window {window} on a {length} px axis"
            assert window.size <= core + 2 * context
            assert owned.start - window.start >= context or window.start == 0
            assert window.stop - owned.stop >= context or window.stop == length
            if align > 1:
                assert window.size % align == 0
                assert window.start % align == 0 or window.stop == length, "off the grid only at the end border"


@HYPOTHESIS
@given(data=st.data(), core=st.integers(1, 160), context=st.integers(0, 40))
def test_plan_tiles_invariants(data, core, context):
    side = st.integers(1, min(700, 20 * core))  # at most 20 x 20 tiles: the checks loop in Python
    _check_plan(data.draw(side), data.draw(side), core, context, align=1)


@st.composite
def _aligned_axis(draw, window):
    """Axis lengths for align=4: any multiple of 4, or longer than a window."""
    if draw(st.booleans()):
        return 4 * draw(st.integers(1, 120))
    return draw(st.integers(window + 1, window + 400))


@HYPOTHESIS
@given(data=st.data(), core=st.integers(1, 40).map(lambda k: 4 * k), context=st.integers(0, 12).map(lambda k: 4 * k))
def test_plan_tiles_aligned_invariants(data, core, context):
    window = core + 2 * context
    height, width = data.draw(_aligned_axis(window)), data.draw(_aligned_axis(window))
    _check_plan(height, width, core, context, align=4)


@pytest.mark.parametrize("size", [(96, 96), (61, 97), (1, 1), (1000, 3), (333, 334)])
def test_plan_tiles_engine_settings(size):
    _check_plan(*size, core=32, context=IMDN_CONTEXT, align=1)
    _check_plan(*size, core=96, context=IMDN_CONTEXT, align=1)


def test_plan_tiles_aligned_windows_sharing_the_border_window():
    """On an axis that is not a multiple of 4, the last core's window ends at the border, off the grid."""
    rows = plan_tiles(50, 8, core=8, context=8, align=4)
    windows = [row[0].rows for row in rows]
    cores = [row[0].core_rows for row in rows]
    assert windows[:4] == [Span(0, 24), Span(8, 32), Span(16, 40), Span(24, 48)]
    assert cores[:4] == [Span(0, 16), Span(16, 24), Span(24, 32), Span(32, 40)]
    assert windows[4:] == [Span(26, 50)] and cores[4:] == [Span(40, 50)]


def test_plan_tiles_balanced_no_slivers():
    """Issue 19: a 384 px axis with 380 px cores was 380 + 4 (two full windows for 4 px); now cores are even."""
    rows = plan_tiles(600, 384, core=380, context=IMDN_CONTEXT)
    assert [row[0].core_rows for row in rows] == [Span(0, 300), Span(300, 600)]
    assert [row[0].rows for row in rows] == [Span(0, 328), Span(272, 600)]  # border cores need context on one side
    assert len(rows[0]) == 1 and rows[0][0].cols == Span(0, 384)


def _read(rows: list[list[Tile]]) -> int:
    return sum(t.rows.size * t.cols.size for row in rows for t in row)


@pytest.mark.parametrize(("height", "width"), [(384, 480), (512, 640), (768, 960), (1000, 1000), (2048, 2048),
                                               (300, 5000), (5000, 300), (4000, 4000)])
def test_plan_grid_reads_least_within_the_window_budget(height, width):
    max_pixels = 191_000  # 512 MB at 2800 B per pixel
    rows = plan_grid(height, width, max_pixels, IMDN_CONTEXT)
    assert rows is not None
    tiles = [t for row in rows for t in row]
    assert np.all(_coverage(tiles, height, width) == 1)
    assert all(t.rows.size * t.cols.size <= max_pixels for t in tiles)
    if height * width <= max_pixels:
        assert len(tiles) == 1
    # Never more than square tiles of the same budget would read.
    side = int(max_pixels**0.5)
    assert _read(rows) <= _read(plan_tiles(height, width, side - 2 * IMDN_CONTEXT, IMDN_CONTEXT))
    assert _read(rows) <= 1.32 * height * width


def test_plan_grid_aligned_and_thin_first_row():
    rows = plan_grid(6000, 2000, 2_000_000, context=112, align=4, first_row_core=300)
    assert rows is not None and rows[0][0].core_rows == Span(0, 300) and rows[0][0].rows == Span(0, 412)
    for t in (t for row in rows for t in row):
        assert t.rows.size % 4 == 0 and t.cols.size % 4 == 0 and t.rows.start % 4 == 0 and t.cols.start % 4 == 0
    assert np.all(_coverage([t for row in rows for t in row], 6000, 2000) == 1)


def test_plan_grid_none_when_no_window_fits():
    assert plan_grid(1000, 1000, 50 * 50, context=28) is None


def test_plan_tiles_whole_image_when_small():
    rows = plan_tiles(20, 30, core=64)
    assert rows == [[Tile(Span(0, 20), Span(0, 30), Span(0, 20), Span(0, 30))]]


@pytest.mark.parametrize(("height", "width"), [(101, 300), (102, 260), (6, 8)])
def test_plan_tiles_aligned_short_unaligned_axis_core_inside_window(height, width):
    # Shorter than one full window: no plan can give every core its context, but every core
    # must still lie inside its (aligned-size) window and the cores must partition the image.
    core, context = (32, 112) if height > 8 else (4, 4)
    rows = plan_tiles(height, width, core, context, align=4)
    tiles = [t for row in rows for t in row]
    assert np.all(_coverage(tiles, height, width) == 1)
    assert len({(t.rows.size, t.cols.size) for t in tiles}) == 1
    for t in tiles:
        assert _inside(t.core_rows, t.rows) and _inside(t.core_cols, t.cols)
        assert t.rows.size % 4 == 0 and t.cols.size % 4 == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"core": 0}, "bad tile plan"),
    ({"core": 8, "context": -1}, "bad tile plan"),
    ({"core": 6, "context": 8, "align": 4}, "multiples of 4"),
    ({"core": 8, "context": 6, "align": 4}, "multiples of 4"),
])
def test_plan_tiles_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_tiles(64, 64, **kwargs)


def test_plan_tiles_axis_shorter_than_alignment_raises():
    with pytest.raises(ValueError, match="shorter than the alignment"):
        plan_tiles(3, 64, core=8, context=8, align=4)


# --- plan_samples -----------------------------------------------------------------------


def test_plan_samples_all_tiles_when_they_fit():
    expected = [t for row in plan_tiles(200, 150, 40, 28) for t in row]
    assert len(expected) == 12
    assert plan_samples(200, 150, 12, 40, 28) == expected
    assert plan_samples(200, 150, 64, 40, 28) == expected


@HYPOTHESIS
@given(height=st.integers(1, 900), width=st.integers(1, 900), max_windows=st.integers(1, 70),
       core=st.integers(30, 120))
def test_plan_samples_disjoint_cores_in_reading_order(height, width, max_windows, core):
    everything = [t for row in plan_tiles(height, width, core) for t in row]
    sample = plan_samples(height, width, max_windows, core)
    assert len(sample) == min(max_windows, len(everything))
    assert len(set(sample)) == len(sample)
    assert all(t in everything for t in sample)
    assert np.all(_coverage(sample, height, width) <= 1), "cores never overlap"
    positions = [everything.index(t) for t in sample]
    assert positions == sorted(positions)


def test_plan_samples_spread_over_the_image():
    sample = plan_samples(1000, 1000, 4, core=100)
    everything = [t for row in plan_tiles(1000, 1000, 100) for t in row]
    positions = [everything.index(t) for t in sample]
    assert positions == [12, 37, 62, 87]
    assert plan_samples(1000, 1000, 1, core=100) == [everything[50]]
