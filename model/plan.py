"""Planning: which networks, at which sizes, for a request -- a pure function, and the one home of the
names and defaults the service, the CLI and the client share.

Scale policy (``content="clean"``, images that are sharp at their own size):
- exactly x2, x3 or x4 (per axis): the dedicated IMDN network;
- any other scale up to 4: MATLAB bicubic pre-scaling to the target size, then
  IMDN_AS (paper Sec. 3.3), with ACS for sides not divisible by 4 -- or, with
  ``any_scale="downscale"``, the next integer IMDN and bicubic down to the target
  (the default, DEFAULT_ANY_SCALE: see docs/model-card.md);
- above 4 (up to ``max_scale``): IMDN x4 first, then x2 if exactly 8 remains,
  else the any-scale path for the remaining factor;
- an explicit model (``x2``/``x3``/``x4``) runs that network and resizes its
  result to the target with bicubic; ``as`` forces the any-scale path.

With ``content="photo"`` (the default, DEFAULT_CONTENT; camera photos: blur, noise, JPEG), every scale up to 4
takes the any-scale path, whose IMDN_AS weights are trained on a camera degradation
model while x2/x3/x4 learned clean bicubic downscales only (docs/model-card.md has
the measurements on both kinds of input); above 4 the policy is the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal, get_args

ModelChoice = Literal["auto", "x2", "x3", "x4", "as"]
Content = Literal["photo", "clean"]
AnyScale = Literal["as", "downscale"]
# How a width and a height given together are met: exactly (fill), inside (contain), or filled and cropped (cover).
Fit = Literal["fill", "contain", "cover"]
# An animated upload: every frame upscaled (model/animation.py), or the first alone.
Frames = Literal["all", "first"]
MODEL_CHOICES: tuple[str, ...] = get_args(ModelChoice)
CONTENT_KINDS: tuple[str, ...] = get_args(Content)
ANY_SCALE_METHODS: tuple[str, ...] = get_args(AnyScale)
FIT_MODES: tuple[str, ...] = get_args(Fit)
FRAME_CHOICES: tuple[str, ...] = get_args(Frames)
NETWORK_SCALES = {"x2": 2, "x3": 3, "x4": 4, "as": 1}
# Extra IMDN_AS weights calibrated to one camera (imdn-sr calibrate) are the model "as:NAME".
CAMERA_PREFIX = "as:"
CAMERA_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# Every name a request may give, as one regular expression (for an API schema).
MODEL_CHOICE_PATTERN = f"^({'|'.join(MODEL_CHOICES)}|{CAMERA_PREFIX}{CAMERA_NAME.pattern})$"

# The defaults of a request and of every front end (service settings, CLI, client, Upscaler): uploads are
# assumed to be camera photos, and clean images' other scales go through the next integer IMDN.
DEFAULT_MODEL: ModelChoice = "auto"
DEFAULT_CONTENT: Content = "photo"
DEFAULT_ANY_SCALE: AnyScale = "downscale"
DEFAULT_SCALE = 2.0
DEFAULT_MAX_SCALE = 8.0
DEFAULT_FIT: Fit = "fill"
DEFAULT_FRAMES: Frames = "all"


class UpscaleError(ValueError):
    """A request the engine cannot fulfil (bad scale, impossible size); the message says why."""


@dataclass(frozen=True)
class Stage:
    """One step of a plan: run `model` (or plain bicubic when model is None) to reach `size` (h, w)."""

    model: str | None
    size: tuple[int, int]


@dataclass(frozen=True)
class Crop:
    """The part of the input a plan enlarges (fit=cover): rows top..top+height, columns left..left+width."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Plan:
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    stages: tuple[Stage, ...]
    crop: Crop | None = None  # the stages start from this part of the input (None: all of it)

    @property
    def source_size(self) -> tuple[int, int]:
        """(h, w) the first stage reads: the crop's, else the input's."""
        return (self.crop.height, self.crop.width) if self.crop else self.in_size

    @property
    def restore_only(self) -> bool:
        """Output at the input's own size: IMDN_AS restores (blur, noise, JPEG) without enlarging."""
        return self.out_size == self.source_size

    @property
    def models(self) -> list[str]:
        return [s.model for s in self.stages if s.model]

    @property
    def label(self) -> str:
        """The steps, e.g. 'x2', 'x3+bicubic', 'x4+as' (the X-Model header)."""
        return "+".join(stage.model or "bicubic" for stage in self.stages)

    @property
    def scale(self) -> tuple[float, float]:
        h, w = self.source_size
        return self.out_size[0] / h, self.out_size[1] / w


def target_size(in_size: tuple[int, int], scale: float | None, width: int | None, height: int | None,
                max_scale: float) -> tuple[int, int]:
    """Validate the request and return the output (height, width); the input's own size is restore-only."""
    h, w = in_size
    if scale is not None and (width is not None or height is not None):
        raise UpscaleError("give either scale or width/height, not both")
    if scale is None and width is None and height is None:
        raise UpscaleError("give a scale or a target width/height")
    if scale is not None:
        if not math.isfinite(scale) or scale < 1:
            raise UpscaleError(f"scale must be a number of at least 1 (1: the input's own size, IMDN_AS only), "
                               f"got {scale}")
        if scale > max_scale:
            raise UpscaleError(f"scale {scale} is above the maximum of {max_scale}")
        return max(h, math.floor(h * scale + 0.5)), max(w, math.floor(w * scale + 0.5))
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
    if out_h > h * max_scale + 0.5 or out_w > w * max_scale + 0.5:
        raise UpscaleError(f"target {out_w}x{out_h} is more than {max_scale}x the input {w}x{h}")
    return out_h, out_w


def fit_box(in_size: tuple[int, int], width: int, height: int, fit: str) -> tuple[tuple[int, int], Crop | None]:
    """A width x height box and a fit -> (output (h, w), the part of the input to enlarge, None: all of it).

    fill: the box exactly (the aspect ratio bends); contain: the largest size inside the box with the input's
    aspect ratio (one side meets the box); cover: the box exactly, from the centred part of the input that
    has the box's aspect ratio (the rest is cropped, so nothing is stretched).
    """
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    if width < 1 or height < 1:
        raise UpscaleError(f"width and height must be positive numbers of pixels, got {width}x{height}")
    h, w = in_size
    if fit == "fill":
        return (height, width), None
    factor = min(width / w, height / h) if fit == "contain" else max(width / w, height / h)
    if factor < 1:
        raise UpscaleError(f"fit={fit} in a {width}x{height} box would shrink the input {w}x{h}: this service "
                           "only enlarges")
    def rounded(side: float, most: int) -> int:
        return min(most, max(1, math.floor(side + 0.5)))

    if fit == "contain":
        return (rounded(h * factor, height), rounded(w * factor, width)), None
    crop_h, crop_w = rounded(height / factor, h), rounded(width / factor, w)
    crop = Crop((h - crop_h) // 2, (w - crop_w) // 2, crop_h, crop_w) if (crop_h, crop_w) != (h, w) else None
    return (height, width), crop


def scale_policy(any_scale: str = DEFAULT_ANY_SCALE, content: str = DEFAULT_CONTENT) -> str:
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


def network_of(model: str) -> str:
    """The network a model name runs: 'x2', 'x3', 'x4' or 'as' (also for a camera's 'as:NAME')."""
    return "as" if model.startswith(CAMERA_PREFIX) else model


def is_model_choice(model: str) -> bool:
    """A name a request may give: auto, x2, x3, x4, as, or a camera's as:NAME (loaded or not)."""
    name = model.removeprefix(CAMERA_PREFIX)
    return model in MODEL_CHOICES or (model.startswith(CAMERA_PREFIX) and CAMERA_NAME.fullmatch(name) is not None)


def plan_upscale(in_size: tuple[int, int], scale: float | None = None, width: int | None = None,
                 height: int | None = None, model: str = DEFAULT_MODEL, max_scale: float = DEFAULT_MAX_SCALE,
                 any_scale: str = DEFAULT_ANY_SCALE, available: Collection[str] | None = None,
                 content: str = DEFAULT_CONTENT, fit: str = DEFAULT_FIT) -> Plan:
    """Request -> Plan (see the module docstring for the policy).

    any_scale: how `auto` reaches a non-integer scale up to 4: "as" (bicubic pre-scaling
    then IMDN_AS, the paper's way) or "downscale" (the next integer IMDN, then bicubic down
    to the target; bench/quality.py compares the two for a set of weights).
    available: the models that can run (default: all); a plan never needs another one.
    content: "photo" sends `auto` up to 4x through IMDN_AS (when loaded), "clean" as above.
    fit: with both width and height, how the box is met (fit_box); ignored otherwise.
    An output at the input's own size (scale 1) is restore-only: IMDN_AS with no resize, photos only.
    """

    def loaded(name: str) -> bool:
        return available is None or name in available

    if any_scale not in ANY_SCALE_METHODS:
        raise ValueError(f"any_scale must be one of {ANY_SCALE_METHODS}, got {any_scale!r}")
    if content not in CONTENT_KINDS:
        raise ValueError(f"content must be one of {CONTENT_KINDS}, got {content!r}")
    if not is_model_choice(model):
        raise UpscaleError(f"unknown model {model!r}; choose one of {', '.join(MODEL_CHOICES)} or as:CAMERA")
    crop = None
    if width is not None and height is not None and scale is None:
        (height, width), crop = fit_box(in_size, width, height, fit)
    h, w = (crop.height, crop.width) if crop else in_size
    out = target_size((h, w), scale, width, height, max_scale)
    if out == (h, w) and network_of(model) != "as" and not (model == "auto" and content == "photo"):
        raise UpscaleError(_nothing_to_enlarge(model, content, w, h))
    exact = next((k for k in (2, 3, 4) if out == (k * h, k * w)), None)
    downscale_k = _smallest_loaded_scale(out, (h, w), loaded) if any_scale == "downscale" else None
    if out == (h, w):  # restore-only: IMDN_AS at the input's size, no resize
        stages = [Stage(model if network_of(model) == "as" else "as", out)]
    elif model in ("x2", "x3", "x4"):
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
    else:  # model "as" or a camera's "as:NAME", or auto's any-scale path
        stages = [Stage(model if network_of(model) == "as" else "as", out)]
    missing = [s.model for s in stages if s.model is not None and not loaded(s.model)]
    if missing:
        raise UpscaleError(f"model {missing[0]} is needed for this request but not loaded on this server")
    return Plan(in_size, out, tuple(stages), crop)


def _nothing_to_enlarge(model: str, content: str, w: int, h: int) -> str:
    """Why an output at the input's size cannot be made without IMDN_AS."""
    if model == "auto" and content == "clean":
        return (f"the output would be the input's own size ({w}x{h}): at that size only IMDN_AS runs, which is "
                "for camera photos (content=photo); a clean image has nothing for x2/x3/x4 to do at scale 1")
    return (f"the output would be the input's own size ({w}x{h}): model {model} enlarges by "
            f"{NETWORK_SCALES[model]}, so it has nothing to do; at the input's size use model=auto with "
            "content=photo, or model=as")


def _smallest_loaded_scale(out: tuple[int, int], in_size: tuple[int, int],
                           loaded: Callable[[str], bool]) -> int | None:
    """The smallest integer network scale that reaches `out` and is loaded, if any."""
    needed = math.ceil(max(out[0] / in_size[0], out[1] / in_size[1]) - 1e-9)
    return next((k for k in range(max(2, needed), 5) if loaded(f"x{k}")), None)
