"""The upscaler: any size, any scale, in bounded memory, delivered in horizontal bands.

A plan (model/plan.py) says which networks run at which sizes; the work goes through a ``Runner``
(model/runner.py), so the service can put a batching pool behind it and a local tool can call the
networks directly. For each stage the Upscaler picks how: the whole image at once, the paper's four
ACS patches, IMDN_AS in parts (model/parts.py) or tiles (model/tiled.py); bicubic stages stream
band by band (model/resize.py). Bands of output become the picture's integer rows here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.parts import PART_WINDOW, any_scale_in_parts, part_band_rows
from model.picture import Picture, array_to_pil, picture_from_array, picture_from_pil, to_array, unit_float
from model.plan import (
    DEFAULT_ANY_SCALE,
    DEFAULT_CONTENT,
    DEFAULT_FIT,
    DEFAULT_MAX_SCALE,
    DEFAULT_MODEL,
    NETWORK_SCALES,
    Plan,
    Stage,
    UpscaleError,
    network_of,
    plan_upscale,
)
from model.resize import resize_band_stream, resize_unit
from model.runner import Runner, is_out_of_memory
from model.tiled import BYTES_PER_INPUT_PIXEL, MIN_CORE, NetworkPass, Tiler
from model.tiling import AS_CONTEXT, IMDN_CONTEXT, Span, acs_tiles

# Float samples converted to the output's integers at a time (16 MB), however wide the image.
CONVERT_SAMPLES = 4 * 2**20


class Upscaler:
    """Runs plans through a Runner, yielding output bands top to bottom.

    With only a runner it plans as the service does with its default settings (model/plan.py's
    defaults). budget_bytes: activation memory per network call; tile_size: force tiles of this core
    side (input pixels); refine_stats: see Tiler; part_window: IMDN_AS in parts runs each band in
    windows of at most this many feature rows and columns, a CPU cache's size (None: whole bands; see
    part_window_for); parts_budget_bytes: what IMDN_AS in parts plans its held maps and bands within
    (default: budget_bytes; the service gives it ONNX Runtime's arena cap, which it sizes replicas for).
    """

    def __init__(self, runner: Runner, *, budget_bytes: int = 512 * 2**20, max_batch: int = 4,
                 max_scale: float = DEFAULT_MAX_SCALE, tile_size: int | None = None,
                 refine_stats: bool | None = None, any_scale: str = DEFAULT_ANY_SCALE,
                 available: Collection[str] | None = None, content: str = DEFAULT_CONTENT,
                 part_window: tuple[int, int] | None = PART_WINDOW, parts_budget_bytes: int | None = None) -> None:
        self.runner = runner
        self.tiler = Tiler(runner, budget_bytes, max_batch, refine_stats)
        self.max_scale = max_scale
        self.tile_size = tile_size
        self.any_scale = any_scale
        self.available = available
        self.content = content
        self.part_window = part_window
        self.parts_budget_bytes = parts_budget_bytes or budget_bytes

    @property
    def budget_bytes(self) -> int:
        """Activation memory per network call: the tiler's, the one copy."""
        return self.tiler.budget_bytes

    def plan(self, in_size: tuple[int, int], scale: float | None = None, width: int | None = None,
             height: int | None = None, model: str = DEFAULT_MODEL, content: str | None = None,
             fit: str = DEFAULT_FIT) -> Plan:
        return plan_upscale(in_size, scale, width, height, model, self.max_scale, self.any_scale, self.available,
                            content or self.content, fit)

    # --- colour planes -------------------------------------------------------------

    def color_bands(self, color: torch.Tensor, plan: Plan) -> Iterator[tuple[int, torch.Tensor]]:
        """color (3,H,W) Picture samples -> (first output row, (3,rows,W') float in [0,1]) bands, top to bottom."""
        source = color
        stages = list(plan.stages)
        # A closing bicubic resize needs only a few rows of its input at a time: it follows the
        # previous stage band by band instead of waiting for (and holding) all of it.
        final_resize = stages.pop() if len(stages) > 1 and stages[-1].model is None else None
        for index, stage in enumerate(stages):
            bands = self._stage_bands(source, stage)
            if index < len(stages) - 1:  # an intermediate network result is read anywhere by the next
                source = torch.cat([band for _, band in bands], dim=1).clamp_(0, 1)
            elif final_resize is None:
                yield from bands
            else:
                yield from resize_band_stream(bands, stage.size[0], final_resize.size)

    def _stage_bands(self, source: torch.Tensor, stage: Stage) -> Iterator[tuple[int, torch.Tensor]]:
        if stage.model is None:
            yield from self._resize_bands(source, stage.size)
        elif network_of(stage.model) == "as":
            yield from self._any_scale_bands(source, stage.size, stage.model)
        else:
            def crop(r: Span, c: Span) -> torch.Tensor:
                return unit_float(source[:, r.start : r.stop, c.start : c.stop])

            size = (source.shape[1], source.shape[2])
            work = NetworkPass(stage.model, NETWORK_SCALES[stage.model], size, crop, IMDN_CONTEXT, align=1)
            yield from self.tiler.bands(work, self.tile_size)

    def _resize_bands(self, source: torch.Tensor, size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
        band = 256
        for top in range(0, size[0], band):
            window = (top, min(size[0], top + band), 0, size[1])
            yield top, resize_unit(source, size, window).clamp_(0, 1)

    def _any_scale_bands(self, source: torch.Tensor, size: tuple[int, int],
                         model: str) -> Iterator[tuple[int, torch.Tensor]]:
        """Bicubic pre-scaling to `size`, then IMDN_AS `model` (whole image with ACS, in parts, or tiles)."""
        h, w = size
        if min(h, w) < 8:  # below ACS's smallest patch: pad the pre-scaled image and crop
            up = resize_unit(source, size)
            ph, pw = -(-max(h, 8) // 4) * 4, -(-max(w, 8) // 4) * 4
            padded = F.pad(up[None], (0, pw - w, 0, ph - h), mode="replicate")[0]
            out = self.runner(model, padded[None].contiguous())[0]
            yield 0, out[:, :h, :w]
            return

        def read(rows: Span, cols: Span) -> torch.Tensor:
            if size == (source.shape[1], source.shape[2]):  # restore-only: the input itself, no resize
                return unit_float(source[:, rows.start : rows.stop, cols.start : cols.stop])
            return resize_unit(source, size, (rows.start, rows.stop, cols.start, cols.stop))

        work = NetworkPass(model, 1, size, read, AS_CONTEXT, align=4)
        core = self.tile_size
        fits = max(h, w) <= core + 2 * AS_CONTEXT if core else h * w * BYTES_PER_INPUT_PIXEL["as"] <= self.budget_bytes
        band_rows = {} if fits or core is not None else part_band_rows(size, self.parts_budget_bytes, self.part_window)
        if band_rows:
            yield from any_scale_in_parts(self.runner, work, band_rows, self.part_window, self.tiler.bands)
            return
        if not fits or (h % 4 == 0 and w % 4 == 0):
            yield from self.tiler.bands(work, core)
            return
        try:  # fits at once, sides not divisible by 4: the paper's 4 patches, as one batch (Sec. 3.3)
            band = self.tiler.run_row(work, acs_tiles(h, w), None)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            yield from self.tiler.bands(work, max(MIN_CORE, max(h, w) // 2 // 4 * 4))
            return
        yield 0, band

    # --- whole pictures ------------------------------------------------------------

    def picture_bands(self, picture: Picture, plan: Plan) -> Iterator[np.ndarray]:
        """Picture -> (rows, W', C) uint8/uint16 bands of the output image, top to bottom."""
        if picture.size != plan.in_size:
            raise UpscaleError(f"plan is for {plan.in_size}, picture is {picture.size}")
        if plan.crop is not None:  # fit=cover: only the centred part with the box's aspect ratio is enlarged
            c = plan.crop
            picture = replace(picture, color=picture.color[:, c.top : c.top + c.height, c.left : c.left + c.width],
                              alpha=None if picture.alpha is None else
                              picture.alpha[c.top : c.top + c.height, c.left : c.left + c.width])
        out_h, out_w = plan.out_size
        for top, color in self.color_bands(picture.color, plan):
            # Converted a slice of rows at a time: converting a whole band at once made a float copy of
            # it (an IMDN_AS band of a 64 MP output is 1,516 x 8,000 px: 145 MB, and the copy as much).
            rows = max(1, CONVERT_SAMPLES // (3 * out_w))
            band: np.ndarray | None = None
            for start in range(0, color.shape[1], rows):
                part = color[:, start : start + rows]
                alpha = None
                if picture.alpha is not None:
                    window = (top + start, top + start + part.shape[1], 0, out_w)
                    alpha = resize_unit(picture.alpha, (out_h, out_w), window)
                converted = to_array(part, alpha, picture.gray, picture.bits)
                if band is None:
                    band = np.empty((color.shape[1], *converted.shape[1:]), converted.dtype)
                band[start : start + part.shape[1]] = converted
            # Drop the float band before yielding: held here, it would live on while the next band
            # computes (two float bands of a wide image at once).
            del color, part, alpha
            assert band is not None
            yield band

    def upscale_picture(self, picture: Picture, plan: Plan) -> np.ndarray:
        """Picture -> whole (H',W',C) array."""
        return np.concatenate(list(self.picture_bands(picture, plan)), axis=0)

    def upscale(self, image: Image.Image | np.ndarray, scale: float | None = None, width: int | None = None,
                height: int | None = None, model: str = DEFAULT_MODEL,
                fit: str = DEFAULT_FIT) -> Image.Image | np.ndarray:
        """PIL image or (H,W[,C]) uint8/uint16 array -> the upscaled image of the same kind."""
        picture = picture_from_pil(image) if isinstance(image, Image.Image) else picture_from_array(image)
        plan = self.plan(picture.size, scale, width, height, model, fit=fit)
        array = self.upscale_picture(picture, plan)
        if isinstance(image, Image.Image):
            return array_to_pil(array, picture.icc_profile)
        return array[:, :, 0] if image.ndim == 2 else array
