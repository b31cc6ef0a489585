"""Tile plans: the adaptive cropping strategy (ACS) and overlapping tiles, as pure functions.

Everything here is geometry on integers; no tensors are created. A tile is a
window the network reads (``window``) and the part of the result it owns
(``core``), both in the network's input coordinates. Cores partition the image
and every window extends its core by a context margin wider than the network's
receptive field, so convolutions see exactly what they would see on the whole
image and no seam can appear; only IMDN's channel attention (a per-image
mean/std) differs slightly between a tile and the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

# Receptive-field radius of IMDN in input pixels: 6 blocks x 4 stacked 3x3 convs,
# plus the feature, LR and upsampler convs (27); rounded up to a multiple of 4.
IMDN_CONTEXT = 28
# IMDN_AS reads its input at 1/4 resolution (after two stride-2 convs), so its receptive field is 4x wider
# and its windows align to 4 input pixels.
AS_CONTEXT = 4 * IMDN_CONTEXT
# Input pixels per feature pixel of each network.
FEATURE_STRIDE = {"x2": 1, "x3": 1, "x4": 1, "as": 4}


@dataclass(frozen=True)
class Span:
    """Half-open interval [start, stop) on one axis."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Tile:
    """Read window and owned core on both axes, in input pixels."""

    rows: Span
    cols: Span
    core_rows: Span
    core_cols: Span


def acs_patch_side(side: int, pad: int = 4) -> int:
    """Eqs. (6)-(8): floor(side/2) + d, with d = pad - (floor(side/2) + pad) % 4, pad = 4k."""
    if pad < 4 or pad % 4:
        raise ValueError(f"ACS padding must be 4k with k >= 1, got {pad}")
    half = side // 2
    return half + pad - (half + pad) % 4


def acs_tiles(height: int, width: int, pad: int = 4) -> list[Tile]:
    """The paper's four overlapping patches (TL, TR, BL, BR), all the same size, divisible by 4.

    Each patch owns one quarter of the image (split at floor(side/2)); the
    extra increments it reads are discarded when pasting. Needs sides >= the
    patch side (true from 7 px up); smaller images are padded by the caller.
    """
    ph, pw = acs_patch_side(height, pad), acs_patch_side(width, pad)
    if ph > height or pw > width:
        raise ValueError(f"image {height}x{width} is smaller than its ACS patch {ph}x{pw}")
    hh, hw = height // 2, width // 2
    rows = [(Span(0, ph), Span(0, hh)), (Span(height - ph, height), Span(hh, height))]
    cols = [(Span(0, pw), Span(0, hw)), (Span(width - pw, width), Span(hw, width))]
    return [Tile(r, c, cr, cc) for r, cr in rows for c, cc in cols]


def _axis_window(length: int, count: int, context: int, align: int, start: int = 0) -> int:
    """The smallest window (a multiple of `align`) with which `count` cores cover [start, length).

    A window holds its core plus `context` on each side that is not an image border, so the
    cores at the borders get `context` more than the others: no sliver, no context wasted.
    """
    borders = 1 + (start == 0)  # sides that need no context
    window = -(-(length - start + context * (2 * count - borders)) // count)
    return -(-window // align) * align


def _axis_count(length: int, max_window: int, context: int, align: int, start: int = 0) -> int | None:
    """The fewest cores whose common window fits `max_window`, or None if no count does.

    One window must also fit inside the axis: on an axis that is not a multiple of `align` it
    cannot, and two balanced windows read far less than one full window plus one pushed
    against the border for the last 1-3 pixels (measured: 2.3x the pixels of a 1345 px axis).
    """
    usable = length - length % align

    def fits(count: int) -> bool:
        window = _axis_window(length, count, context, align, start)
        return window <= max_window and (count > 1 or window <= usable)

    if fits(1):
        return 1
    if max_window - 2 * context < align:
        return None
    borders = 1 + (start == 0)
    count = max(2, -(-(length - start - context * borders) // (max_window - 2 * context)))
    while not fits(count):
        count += 1
    return count


def _axis_tiles(length: int, window: int, context: int, align: int, start: int = 0) -> list[tuple[Span, Span]]:
    """Split [start, length) into cores, each read through a window of `window` pixels.

    Cores are as long as the window allows (so with `_axis_window`'s size they come out
    balanced); each sits inside its window with `context` pixels on each side away from the
    image border. A window starts on a multiple of `align` unless it is pushed against the far
    border; with `align` > 1 on an axis that is not a multiple of it, the last windows are
    pushed off the grid against the border, as ACS's patches are.
    """
    usable = length - length % align  # windows must be multiples of `align` too
    if usable < 1:
        raise ValueError(f"axis of {length} px is shorter than the alignment {align}")
    window = min(usable, window)
    if start == 0 and window >= length:
        return [(Span(0, length), Span(0, length))]
    spans = []
    begin = start
    while begin < length:
        first = max(0, begin - context)
        if first + window >= length:  # the last core: its window ends at the border
            spans.append((Span(length - window, length), Span(begin, length)))
            break
        stop = first + window - context
        if stop <= begin:  # too short for any context
            if start > 0:
                raise ValueError(f"a {window} px window leaves no core with {context} px of context")
            # two windows meeting in the middle
            half = length // 2
            return [(Span(0, window), Span(0, half)), (Span(length - window, length), Span(half, length))]
        spans.append((Span(first, first + window), Span(begin, stop)))
        begin = stop
    return spans


def plan_tiles(height: int, width: int, core: int, context: int = IMDN_CONTEXT, align: int = 1,
               first_row_core: int | None = None) -> list[list[Tile]]:
    """Overlapping tiles for a height x width input, grouped in rows (top to bottom).

    Windows are at most core + 2*context on each side, and as few and as even as that allows.
    All tiles share one window size (so they batch together); with `align`=4 and core/context
    multiples of 4, every window starts on the stride-4 grid IMDN_AS needs, or ends on the
    image's far border. `first_row_core` makes the first row thinner (with its own, smaller
    windows) so that the first band of a streamed result is ready sooner.
    """
    if core < 1 or context < 0:
        raise ValueError(f"bad tile plan: core={core}, context={context}")
    if align > 1 and (core % align or context % align):
        raise ValueError(f"core {core} and context {context} must be multiples of {align}")
    limit = core + 2 * context
    rows = _axis_count(height, limit, context, align) or 2
    cols = _axis_count(width, limit, context, align) or 2
    return _grid(height, width, rows, cols, context, align, first_row_core)


def plan_grid(height: int, width: int, max_pixels: int, context: int = IMDN_CONTEXT, align: int = 1,
              first_row_core: int | None = None) -> list[list[Tile]] | None:
    """The tile plan that reads the fewest pixels with windows of at most `max_pixels` each.

    A whole image that fits is one tile; otherwise rows x columns are chosen together (a
    wide strip or square tiles, whichever reads less), with balanced cores. None if no
    window of that size holds a core with its context. `first_row_core`: as in plan_tiles.
    """
    best: tuple[int, int, int] | None = None
    for rows in range(1, height // max(1, align) + 2):
        tall = _axis_window(height, rows, context, align)
        if rows == 1 and tall > height - height % align:
            continue  # one window cannot span an axis that is not a multiple of `align` (see _axis_count)
        if rows > 1 and tall - 2 * context < align:
            break
        wide = max_pixels // tall // align * align
        cols = _axis_count(width, wide, context, align) if wide >= align else None
        if cols is None:
            continue
        wide = min(width - width % align, _axis_window(width, cols, context, align))
        # Count the windows really placed: on an axis that is not a multiple of `align`, one window
        # cannot span it, and two nearly whole ones would (so such a plan must cost what it reads).
        cost = (len(_axis_tiles(height, tall, context, align)) * len(_axis_tiles(width, wide, context, align))
                * tall * wide)
        if best is None or cost < best[0]:
            best = (cost, rows, cols)
        if cols == 1 and tall >= height:  # more rows can only read more
            break
        # Any plan with more rows reads at least the full width times the height plus the context
        # overlaps of its rows: once that passes the best cost, stop (this bound keeps planning from
        # growing with the image's height squared: seconds of pure Python at 16 MP).
        if (height + 2 * context * rows) * width >= best[0]:
            break
    if best is None:
        return None
    return _grid(height, width, best[1], best[2], context, align, first_row_core)


def _grid(height: int, width: int, rows: int, cols: int, context: int, align: int,
          first_row_core: int | None) -> list[list[Tile]]:
    tall = _axis_window(height, rows, context, align)
    row_spans = _axis_tiles(height, tall, context, align)
    # A thin first row costs one more row of windows: worth it only where there are several.
    if first_row_core is not None and len(row_spans) >= 3 and row_spans[0][1].size > first_row_core:
        if first_row_core < 1 or first_row_core % align:
            raise ValueError(f"first_row_core {first_row_core} must be a positive multiple of {align}")
        first = min(height - height % align, first_row_core + context)
        rest = _axis_window(height, rows, context, align, start=first_row_core)
        row_spans = [(Span(0, first), Span(0, first_row_core))]
        row_spans += _axis_tiles(height, rest, context, align, start=first_row_core)
    col_spans = _axis_tiles(width, _axis_window(width, cols, context, align), context, align)
    return [[Tile(r, c, cr, cc) for c, cc in col_spans] for r, cr in row_spans]


def plan_samples(height: int, width: int, max_windows: int, core: int, context: int = IMDN_CONTEXT,
                 align: int = 1) -> list[Tile]:
    """A stratified sample of a tile partition, for estimating whole-image statistics.

    The image is cut into tiles of `core` pixels (a partition, as ``plan_tiles``);
    up to `max_windows` of them, spread evenly in reading order, are returned.
    Their cores never overlap, so pooled statistics are unbiased, and when all
    tiles fit the sample is the whole image.
    """
    tiles = [t for row in plan_tiles(height, width, core, context, align) for t in row]
    if len(tiles) <= max_windows:
        return tiles
    step = len(tiles) / max(1, max_windows)
    return [tiles[int(i * step + step / 2)] for i in range(max_windows)]
