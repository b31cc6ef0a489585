"""IMDN_AS in parts: the network block by block over bands of feature rows, each gated by the whole
image's exact statistics, its feature maps held between parts (fp16, 1/16 of the output's pixels).

For images past the budget of one pass but with room for the maps: one pass of work, where tiles
would need a second for the statistics, and no tile overlap. The planning is pure (part_stripes,
band_rows_for, part_band_rows); the tiles that stand in when memory runs out are handed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from model.imdn import NUM_BLOCKS, NUM_FEATURES, PART_CONTEXT, PART_STORAGE, contrast_from_moments
from model.runner import Runner, is_out_of_memory
from model.tiled import NetworkPass
from model.tiling import Span

log = logging.getLogger(__name__)

# IMDN_AS in parts (any_scale_in_parts) holds three feature maps of 64 channels at 1/16 of
# the output's pixels in PART_STORAGE (2 bytes): 24 bytes per output pixel for the whole image. Each band
# of feature rows runs in windows of at most PART_WINDOW own rows and columns (balanced stripes): a part
# runs fastest on windows that stay in cache (six blocks over a 7 MP image's feature map took 755 ns per
# feature pixel in 56x384 windows, context included, against 915 in full-width bands of 132 rows; at
# 16 MP, 760 against 860 in bands of 37 rows). A window's run needs, per feature pixel, its part's
# activations, inputs and outputs: the head and the tail also hold 16 input or output pixels and the
# half-resolution maps of the first stride-2 conv (measured on whole bands with bench/engine_memory.py
# --side 1200 --scale 2.5 --model as: ~5.5 KB for head and tail, ~3.2 KB for a block). A band holds,
# per feature pixel of its full width, the outputs of its windows and of the band before (a block's
# three maps: 768 bytes), or the bicubic rows that head and tail read, with the resize's buffers, and
# the tail's output (counted from those buffers, with headroom; peak RSS of the engine alone at 16 and
# 20 MP with these bands: 994 and 1007 MB, against 995 MB at 16 MP with whole bands).
PART_MAPS = 3
PART_BYTES_PER_FEATURE_PIXEL = {"head": 6144, "block": 3584, "tail": 6144, "tail_held": 6144}
PART_HELD_BYTES = {"head": 1536, "block": 1024, "tail": 2048, "tail_held": 2048}
PART_WINDOW = (56, 384)
MIN_PART_ROWS = 16
# A window of a part's run: its feature columns, and its outputs cropped to its own rows and columns.
Window = tuple[slice, tuple[torch.Tensor, ...]]
# Feature rows per band for each kind of part (head, block, tail or tail_held), as part_band_rows plans them.
BandRows = dict[str, int]


def part_window_for(device: torch.device) -> tuple[int, int] | None:
    """IMDN_AS's part windows on a device: PART_WINDOW on a CPU (its cache's size, measured there); on a
    GPU whole bands, one call per band instead of a dozen small ones (not measured there)."""
    return PART_WINDOW if device.type == "cpu" else None


def feature_size(size: tuple[int, int]) -> tuple[int, int]:
    """IMDN_AS's feature map (rows, cols) for an input of `size` (h, w), sides padded to multiples of 4."""
    return -(-size[0] // 4), -(-size[1] // 4)


def part_maps_bytes(size: tuple[int, int], maps: int = PART_MAPS) -> int:
    """`maps` feature maps of IMDN_AS in parts for an image of `size` (h, w), in bytes."""
    rows, cols = feature_size(size)
    return maps * NUM_FEATURES * PART_STORAGE.itemsize * rows * cols


def part_stripes(size: tuple[int, int], part_window: tuple[int, int] | None) -> list[tuple[int, int]]:
    """The balanced column stripes (first, stop feature column) of IMDN_AS's part windows."""
    rows, cols = feature_size(size)
    count = -(-cols // (part_window or (rows, cols))[1])
    return [(cols * i // count, cols * (i + 1) // count) for i in range(count)]

def band_rows_for(size: tuple[int, int], budget_bytes: int, part_window: tuple[int, int] | None,
                  tail: str = "tail") -> BandRows:
    """Feature rows per band of each kind of part of IMDN_AS (at most part_window's), within what
    budget_bytes leaves after the held maps (a fourth with tail_held); empty if that is less
    than MIN_PART_ROWS for some kind."""
    rows, cols = feature_size(size)
    widest = max(stop - first for first, stop in part_stripes(size, part_window))
    left = budget_bytes - part_maps_bytes(size, PART_MAPS + (tail == "tail_held"))
    fitting = {}
    for kind in ("head", "block", tail):
        # Per row of a band: what it holds over its full width, the rest of the measured bytes over
        # its widest window only.
        held = PART_HELD_BYTES[kind]
        run = PART_BYTES_PER_FEATURE_PIXEL[kind] - held
        fitting[kind] = left // (cols * held + (widest + 2 * PART_CONTEXT[kind]) * run)
    if min(fitting.values()) < MIN_PART_ROWS:
        return {}
    return {kind: min(rows, (part_window or (rows, cols))[0], band) for kind, band in fitting.items()}

def part_band_rows(size: tuple[int, int], budget_bytes: int, part_window: tuple[int, int] | None) -> BandRows:
    """IMDN_AS in parts' plan for an image of `size`, or {} where the maps leave no room for bands.

    Where memory allows, the head's output is held in a fourth map: the tail then reads it instead of
    recomputing the head from the pre-scaled image (2-11% of the run at 2.4-11 MP, measured).
    """
    return band_rows_for(size, budget_bytes, part_window, "tail_held") or band_rows_for(size, budget_bytes,
                                                                                           part_window)


def any_scale_in_parts(runner: Runner, work: NetworkPass, band_rows: BandRows, part_window: tuple[int, int] | None,
                       fallback: Callable[[NetworkPass], Iterator[tuple[int, torch.Tensor]]],
                       ) -> Iterator[tuple[int, torch.Tensor]]:
    """IMDN_AS over the whole image, block by block, each gated by its exact whole-image statistics.

    For images past the budget for one pass but with room for three feature maps (1/16 of the
    pixels, 64 channels): the network runs in parts (model.imdn.NetworkPart), each over bands of
    feature rows with the context it needs, and the maps are held between them. That is one
    pass of work, against a tiled pass plus a refining pass for the statistics, with no tile
    overlap. Sides that are not multiples of 4 are padded (edge pixels repeated) and the result
    cropped. If the maps do not fit after all, `fallback` runs the pass instead (tiles). band_rows:
    part_band_rows' plan, with a tail_held entry where the head's output is held.
    """
    height, width = work.size
    rows, cols = feature_size(work.size)
    tail = "tail_held" if "tail_held" in band_rows else "tail"

    def image_rows(top: int, bottom: int) -> torch.Tensor:
        """Input rows 4*top to 4*bottom (feature rows top..bottom), padded to whole feature rows."""
        x = work.read(Span(4 * top, min(height, 4 * bottom)), Span(0, width))
        pad = (0, 4 * cols - width, 0, 4 * (bottom - top) - x.shape[1])
        return F.pad(x[None], pad, mode="replicate") if any(pad) else x[None]

    stripes = part_stripes(work.size, part_window)
    widest = max(stop - first for first, stop in stripes)
    # Each window of a map is copied (the runner needs contiguous arrays) into the same buffer every
    # time: fresh ones were fresh pages for the kernel to fault in each time (~4% of the run at 7 MP).
    most = max(min(rows, band + 2 * PART_CONTEXT[kind]) * min(cols, widest + 2 * PART_CONTEXT[kind])
               for kind, band in band_rows.items())
    copies = [torch.empty(NUM_FEATURES * most, dtype=PART_STORAGE) for _ in range(PART_MAPS + 1)]

    def over_bands(kind: str, block: int, *maps: torch.Tensor) -> Iterator[tuple[slice, list[Window]]]:
        """Run one part band by band, window by window: (a band's feature rows, for each of its windows
        the feature columns and the outputs for those rows and columns; a block's sums as they are).

        Feature maps are read from `maps` as each window runs: the caller stores a band's results
        only after the next band has run (and so read its context).
        """
        context, scale = PART_CONTEXT[kind], 4 if kind.startswith("tail") else 1
        for top in range(0, rows, band_rows[kind]):
            bottom = min(rows, top + band_rows[kind])
            first, last = max(0, top - context), min(rows, bottom + context)
            image = image_rows(first, last) if kind != "block" else None
            windows = []
            for left, right in stripes:
                start, stop = max(0, left - context), min(cols, right + context)
                inputs, spare = [], iter(copies)
                for m in maps:
                    if m.dim() == 4:  # a feature map: the window's rows and columns
                        window = m[:, :, first:last, start:stop]
                        m = next(spare)[: window.numel()].view(window.shape).copy_(window)
                    inputs.append(m)
                if image is not None:
                    inputs.append(image[:, :, :, 4 * start : 4 * stop].contiguous())
                else:
                    inputs.append(torch.tensor([top - first, bottom - first, left - start, right - start]))
                outputs = runner.run_part(work.model, kind, block, *inputs)
                own_rows = slice((top - first) * scale, (bottom - first) * scale)
                own_cols = slice((left - start) * scale, (right - start) * scale)
                windows.append((slice(left, right),
                                tuple(o[:, :, own_rows, own_cols] if o.dim() == 4 else o for o in outputs)))
            yield slice(top, bottom), windows

    try:
        state = torch.empty(1, NUM_FEATURES, rows, cols, dtype=PART_STORAGE)  # the next block's input
        distilled, collected = torch.empty_like(state), torch.zeros_like(state)
        head_map = (torch.empty_like(state),) if tail == "tail_held" else ()  # the head's output, kept
        for own, windows in over_bands("head", 0):
            for columns, (features,) in windows:
                for kept in (state, *head_map):
                    kept[:, :, own, columns] = features
        contrast = torch.zeros(0)
        pixels = torch.full((1, NUM_FEATURES), float(rows * cols), dtype=torch.float64)
        for block in range(NUM_BLOCKS):
            finish = (distilled, state, contrast, collected) if block else (state,)
            sums = torch.zeros(2, NUM_FEATURES, dtype=torch.float64)  # float64: millions of pixels
            pending = None  # a band's results, stored once the next band has read its context
            for own, windows in over_bands("block", block, *finish):
                if pending is not None:
                    _write_block(block, *pending, state, distilled, collected)
                pending = (own, windows)
                for _, outputs in windows:
                    sums += outputs[-1]
            assert pending is not None
            _write_block(block, *pending, state, distilled, collected)
            contrast = contrast_from_moments(torch.cat([pixels, sums])).float()[None]
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        log.warning("no memory for the feature maps of a %dx%d IMDN_AS pass; tiling it", height, width)
        yield from fallback(work)
        return
    for own, windows in over_bands(tail, 0, distilled, state, contrast, collected, *head_map):
        out = torch.cat([image for _, (image,) in windows], dim=3)
        yield 4 * own.start, out[0, :, : height - 4 * own.start, :width].clamp(0, 1)

def _write_block(block: int, rows: slice, windows: list[Window], state: torch.Tensor,
                 distilled: torch.Tensor, collected: torch.Tensor) -> None:
    """Store a block part's outputs for a band: per window (distilled, sums), or (input, collected,
    distilled, sums)."""
    for columns, outputs in windows:
        if block:
            state[:, :, rows, columns], collected[:, :, rows, columns] = outputs[0], outputs[1]
        distilled[:, :, rows, columns] = outputs[-2]
