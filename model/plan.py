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
MODEL_CHOICES: tuple[str, ...] = get_args(ModelChoice)
CONTENT_KINDS: tuple[str, ...] = get_args(Content)
ANY_SCALE_METHODS: tuple[str, ...] = get_args(AnyScale)
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
                 content: str = DEFAULT_CONTENT) -> Plan:
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
    if not is_model_choice(model):
        raise UpscaleError(f"unknown model {model!r}; choose one of {', '.join(MODEL_CHOICES)} or as:CAMERA")
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
    else:  # model "as" or a camera's "as:NAME", or auto's any-scale path
        stages = [Stage(model if network_of(model) == "as" else "as", out)]
    missing = [s.model for s in stages if s.model is not None and not loaded(s.model)]
    if missing:
        raise UpscaleError(f"model {missing[0]} is needed for this request but not loaded on this server")
    return Plan(in_size, out, tuple(stages))


def _smallest_loaded_scale(out: tuple[int, int], in_size: tuple[int, int],
                           loaded: Callable[[str], bool]) -> int | None:
    """The smallest integer network scale that reaches `out` and is loaded, if any."""
    needed = math.ceil(max(out[0] / in_size[0], out[1] / in_size[1]) - 1e-9)
    return next((k for k in range(max(2, needed), 5) if loaded(f"x{k}")), None)
