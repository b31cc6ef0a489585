"""The upscaler: any size, any scale, in bounded memory, delivered in horizontal bands.

Planning (which networks, which sizes) is a pure function of the request; the
work is done through a ``Runner`` (model name, batch -> batch) so the service can
put a batching pool behind it and a local tool can call the network directly.

Scale policy (``content="clean"``, images that are sharp at their own size):
- exactly x2, x3 or x4 (per axis): the dedicated IMDN network;
- any other scale up to 4: MATLAB bicubic pre-scaling to the target size, then
  IMDN_AS (paper Sec. 3.3), with ACS for sides not divisible by 4 -- or, with
  ``any_scale="downscale"``, the next integer IMDN and bicubic down to the target
  (what the service uses while the project's IMDN_AS weights trail it: see docs/model-card.md);
- above 4 (up to ``max_scale``): IMDN x4 first, then x2 if exactly 8 remains,
  else the any-scale path for the remaining factor;
- an explicit model (``x2``/``x3``/``x4``) runs that network and resizes its
  result to the target with bicubic; ``as`` forces the any-scale path.

With ``content="photo"`` (camera photos: blur, noise, JPEG), every scale up to 4
takes the any-scale path, whose IMDN_AS weights are trained on a camera degradation
model while x2/x3/x4 learned clean bicubic downscales only (docs/model-card.md has
the measurements on both kinds of input); above 4 the policy is the same.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.imageio import Picture, array_to_pil, picture_from_array, picture_from_pil, to_array, unit_float
from model.imdn import NUM_BLOCKS, NUM_FEATURES, PART_CONTEXT, PART_STORAGE, contrast_from_moments
from model.resize import contributions, imresize, resize_axis
from model.tiling import IMDN_CONTEXT, Span, Tile, acs_tiles, plan_grid, plan_samples, plan_tiles

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Runs the networks; the service puts its batching pool behind this."""

    def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        """(N,3,h,w) float32 CPU in [0,1], optional (N,6,64) CCA statistics -> (N,3,s*h,s*w) float32 CPU."""
        ...

    def cca_moments(self, name: str, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        """Windows of one image and their valid-feature mask -> (6,3,64) CCA moments (see IMDN.cca_moments)."""
        ...

    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One part of IMDN_AS over a band (model.imdn.NetworkPart): CPU tensors in, CPU tensors out."""
        ...


NETWORK_SCALES = {"x2": 2, "x3": 3, "x4": 4, "as": 1}
MODEL_CHOICES = ("auto", "x2", "x3", "x4", "as")
ANY_SCALE_METHODS = ("as", "downscale")
CONTENT_KINDS = ("photo", "clean")
# IMDN_AS reads its input at 1/4 resolution, so its receptive field is 4x wider.
AS_CONTEXT = 4 * IMDN_CONTEXT
# IMDN_AS works at 1/4 resolution after its two stride-2 convs.
FEATURE_STRIDE = {"x2": 1, "x3": 1, "x4": 1, "as": 4}
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

# IMDN_AS in parts (Upscaler._any_scale_in_parts) holds three feature maps of 64 channels at 1/16 of
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


MIN_CORE = 32
# Float samples converted to the output's integers at a time (16 MB), however wide the image.
CONVERT_SAMPLES = 4 * 2**20


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator failing (RuntimeError/MemoryError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def batched_or_singly(count: int, run: Callable[[slice], torch.Tensor]) -> list[torch.Tensor]:
    """run(slice(0, count)) as one call; if that runs out of memory, run each item's slice on its own."""
    try:
        return [run(slice(0, count))]
    except Exception as exc:
        if count == 1 or not is_out_of_memory(exc):
            raise
    return [run(slice(i, i + 1)) for i in range(count)]


@dataclass(frozen=True)
class NetworkPass:
    """One network over one image: `read(rows, cols)` gives any window of its input of `size` (h, w)."""

    model: str
    scale: int
    size: tuple[int, int]
    read: Callable[[Span, Span], torch.Tensor]
    context: int
    align: int


class UpscaleError(ValueError):
    """A request the engine cannot fulfil (bad scale, impossible size); the message says why."""


@dataclass(frozen=True)
class Stage:
    """One step of a plan: run `model` (or plain bicubic when model is None) to reach `size` (h, w)."""

    model: str | None
    size: tuple[int, int]


@dataclass(frozen=True)
class Plan:
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    stages: tuple[Stage, ...]

    @property
    def models(self) -> list[str]:
        return [s.model for s in self.stages if s.model]

    @property
    def label(self) -> str:
        """The steps, e.g. 'x2', 'x3+bicubic', 'x4+as' (the X-Model header)."""
        return "+".join(stage.model or "bicubic" for stage in self.stages)

    @property
    def scale(self) -> tuple[float, float]:
        return self.out_size[0] / self.in_size[0], self.out_size[1] / self.in_size[1]


def target_size(in_size: tuple[int, int], scale: float | None, width: int | None, height: int | None,
                max_scale: float) -> tuple[int, int]:
    """Validate the request and return the output (height, width)."""
    h, w = in_size
    if scale is not None and (width is not None or height is not None):
        raise UpscaleError("give either scale or width/height, not both")
    if scale is None and width is None and height is None:
        raise UpscaleError("give a scale or a target width/height")
    if scale is not None:
        if not math.isfinite(scale) or scale <= 1:
            raise UpscaleError(f"scale must be a number greater than 1, got {scale}")
        if scale > max_scale:
            raise UpscaleError(f"scale {scale} is above the maximum of {max_scale}")
        out = (max(h, math.floor(h * scale + 0.5)), max(w, math.floor(w * scale + 0.5)))
        if out == (h, w):
            raise UpscaleError(f"scale {scale} leaves a {w}x{h} image the same size: nothing to upscale")
        return out
    for name, value in (("width", width), ("height", height)):
        if value is not None and value < 1:
            raise UpscaleError(f"{name} must be a positive number of pixels, got {value}")
    # One side given: the other follows the aspect ratio, so errors name the size really asked for.
    out_w = width if width is not None else max(1, math.floor(w * (height or h) / h + 0.5))
    out_h = height if height is not None else max(1, math.floor(h * (width or w) / w + 0.5))
    if out_h < h or out_w < w:
        kept = " (the aspect ratio kept)" if width is None or height is None else ""
        raise UpscaleError(f"target {out_w}x{out_h}{kept} is smaller than the input {w}x{h}: "
                           "this service only enlarges")
    if (out_h, out_w) == (h, w):
        raise UpscaleError(f"target {out_w}x{out_h} is the input size: nothing to upscale")
    if out_h > h * max_scale + 0.5 or out_w > w * max_scale + 0.5:
        raise UpscaleError(f"target {out_w}x{out_h} is more than {max_scale}x the input {w}x{h}")
    return out_h, out_w


def scale_policy(any_scale: str, content: str = "clean") -> str:
    """What `auto` does, in words: the one description the web page and /v1/models show; keep it beside
    plan_upscale, whose rules it states."""
    above = "above 4: IMDN ×4, then the rest with IMDN any-scale (×2 for exactly 8)."
    if content == "photo":
        return f"auto, photo: bicubic to the size, then IMDN any-scale (IMDN_AS) at every scale up to 4; {above}"
    non_integer = {
        "downscale": "the next larger integer IMDN, then bicubic down to the exact size",
        "as": "bicubic to the size, then IMDN any-scale (IMDN_AS)",
    }[any_scale]
    return f"auto, clean: IMDN ×2/×3/×4 for those exact scales; other scales up to 4: {non_integer}; {above}"


def plan_upscale(in_size: tuple[int, int], scale: float | None = None, width: int | None = None,
                 height: int | None = None, model: str = "auto", max_scale: float = 8.0,
                 any_scale: str = "as", available: Collection[str] | None = None, content: str = "clean") -> Plan:
    """Request -> Plan (see the module docstring for the policy).

    any_scale: how `auto` reaches a non-integer scale up to 4: "as" (bicubic pre-scaling
    then IMDN_AS, the paper's way) or "downscale" (the next integer IMDN, then bicubic down
    to the target; bench/quality.py compares the two for a set of weights).
    available: the models that can run (default: all); a plan never needs another one.
    content: "photo" sends `auto` up to 4x through IMDN_AS (when loaded), "clean" as above.
    """

    def loaded(name: str) -> bool:
        return available is None or name in available

    if any_scale not in ANY_SCALE_METHODS:
        raise ValueError(f"any_scale must be one of {ANY_SCALE_METHODS}, got {any_scale!r}")
    if content not in CONTENT_KINDS:
        raise ValueError(f"content must be one of {CONTENT_KINDS}, got {content!r}")
    if model not in MODEL_CHOICES:
        raise UpscaleError(f"unknown model {model!r}; choose one of {', '.join(MODEL_CHOICES)}")
    h, w = in_size
    out = target_size(in_size, scale, width, height, max_scale)
    exact = next((k for k in (2, 3, 4) if out == (k * h, k * w)), None)
    downscale_k = _smallest_loaded_scale(out, in_size, loaded) if any_scale == "downscale" else None
    if model in ("x2", "x3", "x4"):
        k = NETWORK_SCALES[model]
        stages = [Stage(model, (k * h, k * w))]
        if stages[0].size != out:
            stages.append(Stage(None, out))
    elif model == "auto" and content == "photo" and out[0] <= 4 * h and out[1] <= 4 * w and loaded("as"):
        stages = [Stage("as", out)]
    elif model == "auto" and exact:
        stages = [Stage(f"x{exact}", out)]
    elif model == "auto" and (out[0] > 4 * h or out[1] > 4 * w):
        first = (4 * h, 4 * w)
        rest = "x2" if out == (2 * first[0], 2 * first[1]) else "as"
        stages = [Stage("x4", first), Stage(rest, out)]
    elif model == "auto" and downscale_k is not None:
        stages = [Stage(f"x{downscale_k}", (downscale_k * h, downscale_k * w)), Stage(None, out)]
    else:
        stages = [Stage("as", out)]
    missing = [s.model for s in stages if s.model is not None and not loaded(s.model)]
    if missing:
        raise UpscaleError(f"model {missing[0]} is needed for this request but not loaded on this server")
    return Plan(in_size, out, tuple(stages))


def _smallest_loaded_scale(out: tuple[int, int], in_size: tuple[int, int],
                           loaded: Callable[[str], bool]) -> int | None:
    """The smallest integer network scale that reaches `out` and is loaded, if any."""
    needed = math.ceil(max(out[0] / in_size[0], out[1] / in_size[1]) - 1e-9)
    return next((k for k in range(max(2, needed), 5) if loaded(f"x{k}")), None)


def tile_core(model: str, budget_bytes: int, context: int) -> int:
    """Largest core side (multiple of 4) whose tile window fits the activation budget."""
    pixels = budget_bytes / BYTES_PER_INPUT_PIXEL[model]
    window = int(math.sqrt(pixels))
    core = (window - 2 * context) // 4 * 4
    return max(MIN_CORE, core)


def resize_unit(samples: torch.Tensor, size: tuple[int, int],
                window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """MATLAB-bicubic resize of Picture samples (uint8 or float) to float32 in [0,1], unclamped."""
    out = imresize(samples, size=size, window=window, float_output=True)
    return out.div_(255) if samples.dtype == torch.uint8 else out


def resize_band_stream(bands: Iterator[tuple[int, torch.Tensor]], in_height: int, out_size: tuple[int, int],
                       rows_per_band: int = 128) -> Iterator[tuple[int, torch.Tensor]]:
    """MATLAB-bicubic resize of an image that arrives as bands, emitted as bands.

    Rows are resized first with the full-axis contributions (so the result equals a
    whole-image resize up to float rounding), keeping only the input rows that later
    output rows still need; columns are then resized band by band.
    """
    out_h, out_w = out_size
    _, idx = contributions(in_height, out_h, out_h / in_height)
    held = torch.zeros(0)
    held_from, received = 0, 0
    pending = iter(bands)
    for top in range(0, out_h, rows_per_band):
        bottom = min(out_h, top + rows_per_band)
        need_to = int(idx[top:bottom].max()) + 1
        while received < need_to:
            _, band = next(pending)
            held = band if held.numel() == 0 else torch.cat([held, band], dim=1)
            received += band.shape[1]
        rows = resize_axis(held, 1, out_h, out_h / in_height, True, (top, bottom), held.dtype, in_height, held_from)
        yield top, imresize(rows, size=(bottom - top, out_w)).clamp_(0, 1)
        if bottom < out_h:  # drop input rows no later output row reads
            keep_from = int(idx[bottom:].min())
            held, held_from = held[:, keep_from - held_from :], keep_from
    for _ in pending:  # let the producing stage finish cleanly
        pass


class Upscaler:
    """Runs plans through a Runner, tile by tile, yielding output bands top to bottom."""

    def __init__(self, runner: Runner, budget_bytes: int = 512 * 2**20, max_batch: int = 4,
                 max_scale: float = 8.0, tile_core_override: int | None = None, refine_stats: bool = True,
                 any_scale: str = "as", available: Collection[str] | None = None, content: str = "clean",
                 part_window: tuple[int, int] | None = PART_WINDOW, parts_budget_bytes: int | None = None) -> None:
        """part_window: IMDN_AS in parts runs each band in windows of at most this many feature rows and
        columns, a CPU cache's size (None: whole bands, as sized by the budget; see part_window_for).
        parts_budget_bytes: what IMDN_AS in parts plans its held maps and bands within (default:
        budget_bytes); the service gives it ONNX Runtime's arena cap, which it sizes replicas for anyway."""
        self.runner = runner
        self.part_window = part_window
        self.parts_budget_bytes = parts_budget_bytes or budget_bytes
        self.any_scale = any_scale
        self.content = content
        self.available = available
        self.refine_stats = refine_stats
        self.budget_bytes = budget_bytes
        self.max_batch = max_batch
        self.max_scale = max_scale
        self.tile_core_override = tile_core_override

    def plan(self, in_size: tuple[int, int], scale: float | None = None, width: int | None = None,
             height: int | None = None, model: str = "auto", content: str | None = None) -> Plan:
        return plan_upscale(in_size, scale, width, height, model, self.max_scale, self.any_scale, self.available,
                            content or self.content)

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
        elif stage.model == "as":
            yield from self._any_scale_bands(source, stage.size)
        else:
            def crop(r: Span, c: Span) -> torch.Tensor:
                return unit_float(source[:, r.start : r.stop, c.start : c.stop])

            size = (source.shape[1], source.shape[2])
            work = NetworkPass(stage.model, NETWORK_SCALES[stage.model], size, crop, IMDN_CONTEXT, align=1)
            yield from self._run_pass(work, self.tile_core_override)

    def _resize_bands(self, source: torch.Tensor, size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
        band = 256
        for top in range(0, size[0], band):
            window = (top, min(size[0], top + band), 0, size[1])
            yield top, resize_unit(source, size, window).clamp_(0, 1)

    def _any_scale_bands(self, source: torch.Tensor, size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
        """Bicubic pre-scaling to `size`, then IMDN_AS (whole image with ACS, or aligned tiles)."""
        h, w = size
        if min(h, w) < 8:  # below ACS's smallest patch: pad the pre-scaled image and crop
            up = resize_unit(source, size)
            ph, pw = -(-max(h, 8) // 4) * 4, -(-max(w, 8) // 4) * 4
            padded = F.pad(up[None], (0, pw - w, 0, ph - h), mode="replicate")[0]
            out = self.runner("as", padded[None].contiguous())[0]
            yield 0, out[:, :h, :w]
            return

        def read(rows: Span, cols: Span) -> torch.Tensor:
            return resize_unit(source, size, (rows.start, rows.stop, cols.start, cols.stop))

        work = NetworkPass("as", 1, size, read, AS_CONTEXT, align=4)
        core = self.tile_core_override
        fits = max(h, w) <= core + 2 * AS_CONTEXT if core else h * w * BYTES_PER_INPUT_PIXEL["as"] <= self.budget_bytes
        # Where memory allows, the head's output is held in a fourth map: the tail then reads it instead
        # of recomputing the head from the pre-scaled image (2-11% of the run at 2.4-11 MP, measured).
        bands = {} if fits or core is not None else self._part_bands(size, "tail_held") or self._part_bands(size)
        if bands:
            yield from self._any_scale_in_parts(work, bands)
            return
        if not fits or (h % 4 == 0 and w % 4 == 0):
            yield from self._run_pass(work, core)
            return
        try:  # fits at once, sides not divisible by 4: the paper's 4 patches, as one batch (Sec. 3.3)
            band = self._run_row(work, acs_tiles(h, w), None)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            yield from self._run_pass(work, max(MIN_CORE, max(h, w) // 2 // 4 * 4))
            return
        yield 0, band

    def _part_stripes(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """The balanced column stripes (first, stop feature column) of IMDN_AS's part windows."""
        rows, cols = feature_size(size)
        count = -(-cols // (self.part_window or (rows, cols))[1])
        return [(cols * i // count, cols * (i + 1) // count) for i in range(count)]

    def _part_bands(self, size: tuple[int, int], tail: str = "tail") -> dict[str, int]:
        """Feature rows per band of each kind of part of IMDN_AS (at most part_window's), within what
        parts_budget_bytes leaves after the held maps (a fourth with tail_held); empty if that is less
        than MIN_PART_ROWS for some kind."""
        rows, cols = feature_size(size)
        widest = max(stop - first for first, stop in self._part_stripes(size))
        left = self.parts_budget_bytes - part_maps_bytes(size, PART_MAPS + (tail == "tail_held"))
        fitting = {}
        for kind in ("head", "block", tail):
            # Per row of a band: what it holds over its full width, the rest of the measured bytes over
            # its widest window only.
            held = PART_HELD_BYTES[kind]
            run = PART_BYTES_PER_FEATURE_PIXEL[kind] - held
            fitting[kind] = left // (cols * held + (widest + 2 * PART_CONTEXT[kind]) * run)
        if min(fitting.values()) < MIN_PART_ROWS:
            return {}
        return {kind: min(rows, (self.part_window or (rows, cols))[0], band) for kind, band in fitting.items()}

    def _any_scale_in_parts(self, work: NetworkPass, bands: dict[str, int]) -> Iterator[tuple[int, torch.Tensor]]:
        """IMDN_AS over the whole image, block by block, each gated by its exact whole-image statistics.

        For images past the budget for one pass but with room for three feature maps (1/16 of the
        pixels, 64 channels): the network runs in parts (model.imdn.NetworkPart), each over bands of
        feature rows with the context it needs, and the maps are held between them. That is one
        pass of work, against a tiled pass plus a refining pass for the statistics, with no tile
        overlap. Sides that are not multiples of 4 are padded (edge pixels repeated) and the result
        cropped. If the maps do not fit after all, the image is tiled instead. bands: _part_bands' plan,
        with a tail_held entry where the head's output is held.
        """
        height, width = work.size
        rows, cols = feature_size(work.size)
        tail = "tail_held" if "tail_held" in bands else "tail"

        def image_rows(top: int, bottom: int) -> torch.Tensor:
            """Input rows 4*top to 4*bottom (feature rows top..bottom), padded to whole feature rows."""
            x = work.read(Span(4 * top, min(height, 4 * bottom)), Span(0, width))
            pad = (0, 4 * cols - width, 0, 4 * (bottom - top) - x.shape[1])
            return F.pad(x[None], pad, mode="replicate") if any(pad) else x[None]

        stripes = self._part_stripes(work.size)
        widest = max(stop - first for first, stop in stripes)
        # Each window of a map is copied (the runner needs contiguous arrays) into the same buffer every
        # time: fresh ones were fresh pages for the kernel to fault in each time (~4% of the run at 7 MP).
        most = max(min(rows, band + 2 * PART_CONTEXT[kind]) * min(cols, widest + 2 * PART_CONTEXT[kind])
                   for kind, band in bands.items())
        copies = [torch.empty(NUM_FEATURES * most, dtype=PART_STORAGE) for _ in range(PART_MAPS + 1)]

        def over_bands(kind: str, block: int, *maps: torch.Tensor) -> Iterator[tuple[slice, list[Window]]]:
            """Run one part band by band, window by window: (a band's feature rows, for each of its windows
            the feature columns and the outputs for those rows and columns; a block's sums as they are).

            Feature maps are read from `maps` as each window runs: the caller stores a band's results
            only after the next band has run (and so read its context).
            """
            context, scale = PART_CONTEXT[kind], 4 if kind.startswith("tail") else 1
            for top in range(0, rows, bands[kind]):
                bottom = min(rows, top + bands[kind])
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
                    outputs = self.runner.run_part(work.model, kind, block, *inputs)
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
                        self._write_block(block, *pending, state, distilled, collected)
                    pending = (own, windows)
                    for _, outputs in windows:
                        sums += outputs[-1]
                assert pending is not None
                self._write_block(block, *pending, state, distilled, collected)
                contrast = contrast_from_moments(torch.cat([pixels, sums])).float()[None]
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            log.warning("no memory for the feature maps of a %dx%d IMDN_AS pass; tiling it", height, width)
            yield from self._run_pass(work)
            return
        for own, windows in over_bands(tail, 0, distilled, state, contrast, collected, *head_map):
            out = torch.cat([image for _, (image,) in windows], dim=3)
            yield 4 * own.start, out[0, :, : height - 4 * own.start, :width].clamp(0, 1)

    @staticmethod
    def _write_block(block: int, rows: slice, windows: list[Window], state: torch.Tensor,
                     distilled: torch.Tensor, collected: torch.Tensor) -> None:
        """Store a block part's outputs for a band: per window (distilled, sums), or (input, collected,
        distilled, sums)."""
        for columns, outputs in windows:
            if block:
                state[:, :, rows, columns], collected[:, :, rows, columns] = outputs[0], outputs[1]
            distilled[:, :, rows, columns] = outputs[-2]

    def _run_pass(self, work: NetworkPass, core: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Tile the pass (one tile when it fits) and yield one band per tile row.

        core: tiles of at most this many pixels a side; by default, the plan that reads the
        fewest pixels with windows that fit the memory budget.
        """
        budget_core = tile_core(work.model, self.budget_bytes, work.context)
        # A thin first row: the first band (and a streamed response's first byte) comes sooner.
        first_row = max(work.align, (core or budget_core) // 4 // work.align * work.align)
        height, width = work.size
        rows = None
        if core is None:
            max_pixels = self.budget_bytes // BYTES_PER_INPUT_PIXEL[work.model]
            rows = plan_grid(height, width, max_pixels, work.context, work.align, first_row)
        if rows is None:  # a forced size, or a budget too small for any plan: the smallest tiles
            rows = plan_tiles(height, width, core or budget_core, work.context, work.align, first_row)
        contrast = self._image_contrast(work, rows)
        for row in rows:
            core = max(max(t.core_rows.size, t.core_cols.size) for t in row)
            yield row[0].core_rows.start * work.scale, self._run_row_retrying(work, row, contrast, core)

    def _run_row_retrying(self, work: NetworkPass, row: list[Tile], contrast: torch.Tensor | None,
                          core: int) -> torch.Tensor:
        """Run one row; on out-of-memory, redo just that row with smaller tiles (cores halved, down to
        MIN_CORE), as long as their windows really are smaller: a window is its core plus the context."""
        try:
            return self._run_row(work, row, contrast)
        except Exception as exc:
            window = max(max(t.rows.size, t.cols.size) for t in row)
            halved = min(core, max(work.size), window - 2 * work.context) // 2 // work.align * work.align
            smaller = max(MIN_CORE, halved)
            if not is_out_of_memory(exc) or smaller + 2 * work.context >= window:
                raise
        top, bottom = row[0].core_rows.start, row[0].core_rows.stop
        if contrast is None:  # the row was the whole image: now it is tiled, so tiles need shared statistics
            contrast = self._image_contrast(work, plan_tiles(work.size[0], work.size[1], smaller, work.context,
                                                             work.align))
        # The finer rows that cover this band, their cores clipped to it (a window still holds its clipped core).
        sub_rows = [[replace(t, core_rows=Span(max(top, t.core_rows.start), min(bottom, t.core_rows.stop)))
                     for t in r]
                    for r in plan_tiles(work.size[0], work.size[1], smaller, work.context, work.align)
                    if r[0].core_rows.stop > top and r[0].core_rows.start < bottom]
        return torch.cat([self._run_row_retrying(work, r, contrast, smaller) for r in sub_rows], dim=1)

    def _image_contrast(self, work: NetworkPass, rows: list[list[Tile]]) -> torch.Tensor | None:
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
        stride, context = FEATURE_STRIDE[work.model], work.context
        core = SAMPLE_CORE_CONTEXTS * context
        window_pixels = (core + 2 * context) ** 2
        fitting = self.budget_bytes // (window_pixels * BYTES_PER_INPUT_PIXEL[work.model])
        share = SAMPLE_SHARE * work.size[0] * work.size[1] // window_pixels
        max_windows = int(max(1, min(fitting, share)))
        samples = plan_samples(work.size[0], work.size[1], max_windows, core, context, align=stride)
        windows, mask = self._windows_and_mask(samples, work.read, stride)
        contrast = contrast_from_moments(self.runner.cca_moments(work.model, windows, mask))
        if not self.refine_stats and work.model not in ALWAYS_REFINED:
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
        stride = FEATURE_STRIDE[work.model]

        def run(part: slice) -> torch.Tensor:
            return self.runner.cca_moments(work.model, *self._windows_and_mask(tiles[part], work.read, stride),
                                           contrast)

        return torch.stack(batched_or_singly(len(tiles), run)).sum(dim=0)

    def _tiles_per_call(self, work: NetworkPass, tile: Tile) -> int:
        """As many tiles of this window size per network call as the memory budget holds (at least one)."""
        window_bytes = tile.rows.size * tile.cols.size * BYTES_PER_INPUT_PIXEL[work.model]
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

    def _run_row(self, work: NetworkPass, row: list[Tile], contrast: torch.Tensor | None) -> torch.Tensor:
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

    # --- whole pictures ------------------------------------------------------------

    def picture_bands(self, picture: Picture, plan: Plan) -> Iterator[np.ndarray]:
        """Picture -> (rows, W', C) uint8/uint16 bands of the output image, top to bottom."""
        if picture.size != plan.in_size:
            raise UpscaleError(f"plan is for {plan.in_size}, picture is {picture.size}")
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
                height: int | None = None, model: str = "auto") -> Image.Image | np.ndarray:
        """PIL image or (H,W[,C]) uint8/uint16 array -> the upscaled image of the same kind."""
        picture = picture_from_pil(image) if isinstance(image, Image.Image) else picture_from_array(image)
        plan = self.plan(picture.size, scale, width, height, model)
        array = self.upscale_picture(picture, plan)
        if isinstance(image, Image.Image):
            return array_to_pil(array, picture.icc_profile)
        return array[:, :, 0] if image.ndim == 2 else array
