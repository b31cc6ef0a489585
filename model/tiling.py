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


def _axis_tiles(length: int, core: int, context: int, align: int, start: int = 0) -> list[tuple[Span, Span]]:
    """Split [0, length) into cores, each read through a window of one fixed size.

    The window is core + 2*context (or the whole axis if shorter), placed so the
    core sits inside it with `context` pixels on each side away from the image
    border, starting on a multiple of `align` unless it is pushed against the
    far border. With `align` > 1 the window is a multiple of `align` too, so on
    an axis that is not, the windows near the end are pushed off the grid
    against the border, as ACS's patches are.
    """
    usable = length - length % align  # windows must be multiples of `align` too
    if usable < 1:
        raise ValueError(f"axis of {length} px is shorter than the alignment {align}")
    window = min(usable, core + 2 * context)
    if window < length:
        # Every core must fit inside a window with its context: cores shrink if the window is short.
        core = min(core, window - 2 * context)
        if core < align:  # an axis too short for any context: two windows meeting in the middle
            half = length // 2
            return [(Span(0, window), Span(0, half)), (Span(length - window, length), Span(half, length))]
    spans = []
    for begin in range(start, length, core):
        owned = Span(begin, min(length, begin + core))
        first = max(0, (begin - context) // align * align)
        first = min(first, length - window)
        spans.append((Span(first, first + window), owned))
    return spans


def plan_tiles(height: int, width: int, core: int, context: int = IMDN_CONTEXT, align: int = 1,
               first_row_core: int | None = None) -> list[list[Tile]]:
    """Overlapping tiles for a height x width input, grouped in rows (top to bottom).

    All tiles share one window size (so they batch together); with `align`=4 and
    core/context multiples of 4, every window starts on the stride-4 grid
    IMDN_AS needs, or ends on the image's far border. `first_row_core` makes the
    first row thinner (with its own, smaller windows) so that the first band of
    a streamed result is ready sooner.
    """
    if core < 1 or context < 0:
        raise ValueError(f"bad tile plan: core={core}, context={context}")
    if align > 1 and (core % align or context % align):
        raise ValueError(f"core {core} and context {context} must be multiples of {align}")
    row_spans = _axis_tiles(height, core, context, align)
    full_windows = height - height % align >= core + 2 * context  # no short-axis fallback in play
    if first_row_core is not None and full_windows and len(row_spans) > 1 and first_row_core < core:
        if first_row_core < 1 or first_row_core % align:
            raise ValueError(f"first_row_core {first_row_core} must be a positive multiple of {align}")
        first_window = min(height - height % align, first_row_core + 2 * context)
        row_spans = [(Span(0, first_window), Span(0, first_row_core))]
        row_spans += _axis_tiles(height, core, context, align, start=first_row_core)
    col_spans = _axis_tiles(width, core, context, align)
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
