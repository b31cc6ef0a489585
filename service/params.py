"""The request's parameters: one model for query parameters and multipart form fields, and its OpenAPI body."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from model.metadata import MetadataPolicy
from model.plan import (
    DEFAULT_FIT,
    DEFAULT_FRAMES,
    DEFAULT_MODEL,
    DEFAULT_SCALE,
    MODEL_CHOICE_PATTERN,
    MODEL_CHOICES,
    Content,
    Fit,
    Frames,
    is_model_choice,
)
from service.errors import BadRequestError

# Numbers as JSON and HTML forms write them: ASCII digits, a sign, a decimal point, an exponent. Python and
# pydantic also read "1_0" (as 10), " 2" and other digits; those are refused rather than guessed at.
PLAIN_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


class UpscaleParams(BaseModel):
    """How to upscale; as query parameters, or as form fields beside a multipart upload."""

    model_config = ConfigDict(extra="forbid")

    scale: float | None = Field(None, ge=1, allow_inf_nan=False,
                                description=f"Scale factor >= 1 (default {DEFAULT_SCALE:g} when no width/height is "
                                "given); 1 (or the input's own width/height) runs IMDN_AS on a photo at its own "
                                "size, no enlarging (content=photo only)")
    width: int | None = Field(None, ge=1, le=65535, description="Target width in pixels")
    height: int | None = Field(None, ge=1, le=65535, description="Target height in pixels; "
                               "give one of width/height to keep the aspect ratio")
    fit: Fit = Field(DEFAULT_FIT, description="With both width and height: 'fill' (exactly that size, the aspect "
                     "ratio bends), 'contain' (the largest size inside the box, aspect kept), 'cover' (the box, "
                     "aspect kept, the centre cropped); X-Output-Size says what came out")
    model: str = Field(
        DEFAULT_MODEL, description="auto: by content (below); x2/x3/x4: that network, then bicubic to the target; "
        "as: bicubic + IMDN_AS at any scale; as:CAMERA: the same with IMDN_AS calibrated to a camera (the "
        "server's IMDN_CAMERAS, listed by GET /v1/models)",
        examples=[*MODEL_CHOICES, "as:my_camera"],
        json_schema_extra={"pattern": MODEL_CHOICE_PATTERN})  # checked by known_model, with a clearer message
    content: Content | None = Field(
        None, description="what the image is, for model=auto: 'photo' (camera photos: IMDN_AS at every scale up "
        "to 4, fine-tuned on real camera pairs: +0.93 dB over the camera's own image on pairs it never saw, "
        "docs/model-card.md) or 'clean' (already sharp images such as renders and "
        "screenshots: IMDN x2/x3/x4 for exact scales, else IMDN_ANY_SCALE); default: the server's IMDN_CONTENT")
    format: Literal["png", "webp", "jpeg", "avif", "gif"] = Field(
        "png", description="Output format; PNG is streamed (and keeps 16 bits); JPEG has no alpha, so transparency "
        "is flattened onto white; an animation comes back as APNG (png), animated WebP or GIF")
    frames: Frames = Field(DEFAULT_FRAMES, description="Animated GIF, WebP and PNG: 'all' upscales every frame, "
                           "keeping durations and loop count (IMDN_MAX_ANIMATION_PIXELS bounds frames x output "
                           "pixels); 'first' upscales the first frame only (X-Frames-Dropped)")
    quality: int = Field(90, ge=1, le=100, description="WebP/JPEG/AVIF quality")
    metadata: MetadataPolicy | None = Field(
        None, description="EXIF, XMP and IPTC of the upload in the output: 'keep', 'nogps' (all but location), "
        "'strip' (only the ICC profile, always kept); orientation is reset and pixel sizes updated "
        "(docs/metadata.md); default: the server's IMDN_METADATA")
    url: str | None = Field(None, max_length=2048, description="the source image's http(s) URL, instead of a body: "
                            "fetched by the service if its host is in IMDN_SOURCE_ALLOW (docs/urls.md)")

    @field_validator("scale", "width", "height", "quality", mode="before")
    @classmethod
    def plain_number(cls, value: object) -> object:
        if isinstance(value, str) and not PLAIN_NUMBER.fullmatch(value):
            raise ValueError("must be a number in plain decimal notation, such as 2 or 2.5 (no underscores, "
                             "spaces or other characters)")
        return value

    @field_validator("model")
    @classmethod
    def known_model(cls, value: str) -> str:
        if not is_model_choice(value):
            raise ValueError(f"must be one of {', '.join(MODEL_CHOICES)}, or as:CAMERA for a calibrated camera")
        return value


def single_values(pairs: Iterable[tuple[str, str]], where: str) -> dict[str, str]:
    """name -> value; every parameter is single-valued, so a name given twice is refused (400), never resolved
    by picking one of its values."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values:
            raise BadRequestError(f"the {where} {name!r} is given more than once ({values[name]!r}, {value!r}): "
                                  "give each parameter once")
        values[name] = value
    return values


def _validated(values: dict[str, object]) -> UpscaleParams:
    try:
        return UpscaleParams.model_validate(values)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadRequestError(detail) from exc


def merge_form_fields(params: UpscaleParams, fields: dict[str, str]) -> UpscaleParams:
    """The query's parameters and the form's fields as one; a parameter given in both must agree (400)."""
    if not fields:
        return params
    form = _validated(dict(fields))
    for name in sorted(params.model_fields_set & fields.keys()):
        if getattr(form, name) != getattr(params, name):
            raise BadRequestError(f"{name} is {getattr(params, name)!r} in the query but {getattr(form, name)!r} in "
                                  "the form: give it in one place")
    return _validated({**params.model_dump(exclude_unset=True), **fields})


UPSCALE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "The image file"},
                    **{name: {**schema, "description": f"Same as the `{name}` query parameter"}
                       for name, schema in UpscaleParams.model_json_schema()["properties"].items()},
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
