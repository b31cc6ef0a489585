"""A network pass in tiles: windows that fit the memory budget, all gated by shared whole-image statistics.

Cores partition the image and windows add the network's context, so convolutions see what they would on
the whole image; only the channel attention's per-image mean/std would differ, so every tile gets the
image's own (estimated from sample windows, then refined by one pass over every core where needed).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from model.imdn import contrast_from_moments
from model.plan import network_of
from model.runner import Runner, batched_or_singly, is_out_of_memory
from model.tiling import FEATURE_STRIDE, Span, Tile, plan_grid, plan_samples, plan_tiles

log = logging.getLogger(__name__)

# The statistics of a tiled image come from sample windows whose pixels total about 1/16 of the
# image (at least one window), so the estimate costs a small, fixed share of the work at any size.
# Their cores are 4 contexts wide (168 px windows for IMDN, 44% of them core). Measured on Set14 x2
# with 128 px tiles (bench/tiling.py): one such window already keeps every value within 1/255.
SAMPLE_CORE_CONTEXTS = 4
SAMPLE_SHARE = 1 / 16
# IMDN_AS's statistics from samples alone miss its seam criterion (bench/tiling.py --scale 2.5 --core 128:
# 97.7% of values within 1/255, max 6/255, vs 100% and 1/255 refined), so it always gets the refining
# pass; it only tiles past ~2 MP, where that pass costs about 2x.
ALWAYS_REFINED = frozenset({"as"})
# Peak bytes per input pixel of one network call at fp32 (bench/activation_memory.py measured
# 2.1-2.4 KB for IMDN with torch/onnxruntime on the CPU, 170-210 B for IMDN_AS, which works at
# 1/16 of the pixels), with ~15% headroom.
BYTES_PER_INPUT_PIXEL = {"x2": 2800, "x3": 2800, "x4": 2800, "as": 240}
# The smallest tile core an out-of-memory retry halves down to.
MIN_CORE = 32


@dataclass(frozen=True)
class NetworkPass:
    """One network over one image: `read(rows, cols)` gives any window of its input of `size` (h, w)."""

    model: str
    scale: int
    size: tuple[int, int]
    read: Callable[[Span, Span], torch.Tensor]
    context: int
    align: int

    @property
    def network(self) -> str:
        """The architecture `model` is an instance of (a camera's 'as:NAME' is an IMDN_AS)."""
        return network_of(self.model)



def tile_core(model: str, budget_bytes: int, context: int) -> int:
    """Largest core side (multiple of 4) whose tile window fits the activation budget."""
    pixels = budget_bytes / BYTES_PER_INPUT_PIXEL[model]
    window = int(math.sqrt(pixels))
    core = (window - 2 * context) // 4 * 4
    return max(MIN_CORE, core)


@dataclass
class Tiler:
    """Runs NetworkPasses tile by tile through a Runner, within `budget_bytes` of activations per call.

    refine_stats: one more pass over every core for near-exact whole-image statistics: None (default)
    for the models in ALWAYS_REFINED only, True for every tiled pass, False for none (estimates only).
    """

    runner: Runner
    budget_bytes: int
    max_batch: int = 4
    refine_stats: bool | None = None

    def bands(self, work: NetworkPass, tile_size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Tile the pass (one tile when it fits) and yield (first output row, band) per tile row.

        tile_size: tiles of at most this many pixels a side; by default, the plan that reads the
        fewest pixels with windows that fit the memory budget.
        """
        core = tile_size or tile_core(work.network, self.budget_bytes, work.context)
        # A thin first row: the first band (and a streamed response's first byte) comes sooner.
        first_row = max(work.align, core // 4 // work.align * work.align)
        height, width = work.size
        rows = None
        if tile_size is None:
            max_pixels = self.budget_bytes // BYTES_PER_INPUT_PIXEL[work.network]
            rows = plan_grid(height, width, max_pixels, work.context, work.align, first_row)
        if rows is None:  # a forced size, or a budget too small for any plan: the smallest tiles
            rows = plan_tiles(height, width, core, work.context, work.align, first_row)
        contrast = self.image_contrast(work, rows)
        for row in rows:
            row_core = max(max(t.core_rows.size, t.core_cols.size) for t in row)
            yield row[0].core_rows.start * work.scale, self._run_row_retrying(work, row, contrast, row_core)

    def _run_row_retrying(self, work: NetworkPass, row: list[Tile], contrast: torch.Tensor | None,
                          core: int) -> torch.Tensor:
        """Run one row; on out-of-memory, redo just that row with smaller tiles (cores halved, down to
        MIN_CORE), as long as their windows really are smaller: a window is its core plus the context."""
        try:
            return self.run_row(work, row, contrast)
        except Exception as exc:
            window = max(max(t.rows.size, t.cols.size) for t in row)
            halved = min(core, max(work.size), window - 2 * work.context) // 2 // work.align * work.align
            smaller = max(MIN_CORE, halved)
            if not is_out_of_memory(exc) or smaller + 2 * work.context >= window:
                raise
        top, bottom = row[0].core_rows.start, row[0].core_rows.stop
        if contrast is None:  # the row was the whole image: now it is tiled, so tiles need shared statistics
            contrast = self.image_contrast(work, plan_tiles(work.size[0], work.size[1], smaller, work.context,
                                                             work.align))
        # The finer rows that cover this band, their cores clipped to it (a window still holds its clipped core).
        sub_rows = [[replace(t, core_rows=Span(max(top, t.core_rows.start), min(bottom, t.core_rows.stop)))
                     for t in r]
                    for r in plan_tiles(work.size[0], work.size[1], smaller, work.context, work.align)
                    if r[0].core_rows.stop > top and r[0].core_rows.start < bottom]
        return torch.cat([self._run_row_retrying(work, r, contrast, smaller) for r in sub_rows], dim=1)

    def image_contrast(self, work: NetworkPass, rows: list[list[Tile]]) -> torch.Tensor | None:
        """For a tiled image, the whole image's CCA statistics, so all tiles are gated alike.

        Without this each tile would gate its channels by its own mean/std and
        neighbouring tiles would disagree (measured: up to 23/255 at a 128 px core).
        First an estimate from sample windows pooled as one image; then, if
        ``refine_stats`` (always for IMDN_AS), one pass over every tile's core with that estimate
        gives the moments of the whole image (block 1 exact, later blocks off
        only by the estimate's error squared). A single tile needs nothing.
        """
        if len(rows) == 1 and len(rows[0]) == 1:
            return None
        stride, context = FEATURE_STRIDE[work.network], work.context
        core = SAMPLE_CORE_CONTEXTS * context
        window_pixels = (core + 2 * context) ** 2
        fitting = self.budget_bytes // (window_pixels * BYTES_PER_INPUT_PIXEL[work.network])
        share = SAMPLE_SHARE * work.size[0] * work.size[1] // window_pixels
        max_windows = int(max(1, min(fitting, share)))
        samples = plan_samples(work.size[0], work.size[1], max_windows, core, context, align=stride)
        windows, mask = self._windows_and_mask(samples, work.read, stride)
        contrast = contrast_from_moments(self.runner.cca_moments(work.model, windows, mask))
        refined = self.refine_stats if self.refine_stats is not None else work.network in ALWAYS_REFINED
        if not refined:
            return contrast
        total = torch.zeros(0)
        for row in rows:  # batches within a row: rows may differ in window size
            per_call = self._tiles_per_call(work, row[0])
            for first in range(0, len(row), per_call):
                try:
                    moments = self._refine_moments(work, row[first : first + per_call], contrast)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    # Shared statistics keep the tiles seamless either way; the estimate is only less exact.
                    log.warning("no memory to refine the statistics of a %dx%d %s pass; using the estimate",
                                *work.size, work.model)
                    return contrast
                total = moments if total.numel() == 0 else total + moments
        return contrast_from_moments(total)

    def _refine_moments(self, work: NetworkPass, tiles: list[Tile], contrast: torch.Tensor) -> torch.Tensor:
        """The CCA moments of the tiles' cores under `contrast`; on out-of-memory, one tile at a time."""
        stride = FEATURE_STRIDE[work.network]

        def run(part: slice) -> torch.Tensor:
            return self.runner.cca_moments(work.model, *self._windows_and_mask(tiles[part], work.read, stride),
                                           contrast)

        return torch.stack(batched_or_singly(len(tiles), run)).sum(dim=0)

    def _tiles_per_call(self, work: NetworkPass, tile: Tile) -> int:
        """As many tiles of this window size per network call as the memory budget holds (at least one)."""
        window_bytes = tile.rows.size * tile.cols.size * BYTES_PER_INPUT_PIXEL[work.network]
        return max(1, min(self.max_batch, self.budget_bytes // window_bytes))

    @staticmethod
    def _windows_and_mask(tiles: list[Tile], read: Callable[[Span, Span], torch.Tensor],
                          stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles -> their input windows and a feature-resolution mask of their cores."""
        windows = torch.stack([read(t.rows, t.cols) for t in tiles])
        mask = torch.zeros(len(tiles), 1, windows.shape[2] // stride, windows.shape[3] // stride, dtype=torch.bool)
        for i, t in enumerate(tiles):
            y0, y1 = (t.core_rows.start - t.rows.start) // stride, -(-(t.core_rows.stop - t.rows.start) // stride)
            x0, x1 = (t.core_cols.start - t.cols.start) // stride, -(-(t.core_cols.stop - t.cols.start) // stride)
            mask[i, :, y0:y1, x0:x1] = True
        return windows, mask

    def run_row(self, work: NetworkPass, row: list[Tile], contrast: torch.Tensor | None) -> torch.Tensor:
        """Run a row of tiles in batches and paste their cores into one band (3, rows*s, W*s).

        contrast: the whole image's (6,64) CCA statistics, given to every tile.
        """
        scale = work.scale
        top = min(t.core_rows.start for t in row)
        bottom = max(t.core_rows.stop for t in row)
        band = torch.empty(3, (bottom - top) * scale, work.size[1] * scale)
        per_call = self._tiles_per_call(work, row[0])
        for first in range(0, len(row), per_call):
            group = row[first : first + per_call]
            outputs = self._run_group(work, group, contrast)
            for tile, out in zip(group, outputs, strict=True):
                y0 = (tile.core_rows.start - tile.rows.start) * scale
                x0 = (tile.core_cols.start - tile.cols.start) * scale
                ch, cw = tile.core_rows.size * scale, tile.core_cols.size * scale
                by, bx = (tile.core_rows.start - top) * scale, tile.core_cols.start * scale
                band[:, by : by + ch, bx : bx + cw] = out[:, y0 : y0 + ch, x0 : x0 + cw]
        return band.clamp_(0, 1)

    def _run_group(self, work: NetworkPass, group: list[Tile], contrast: torch.Tensor | None) -> list[torch.Tensor]:
        """One batched call; if the batch runs out of memory, one tile at a time before giving up."""
        batch = torch.stack([work.read(t.rows, t.cols) for t in group])

        def run(part: slice) -> torch.Tensor:
            stats = None if contrast is None else contrast.expand(part.stop - part.start, -1, -1)
            return self.runner(work.model, batch[part], stats)

        return [tile for outputs in batched_or_singly(len(group), run) for tile in outputs]
