"""Animations: animated GIF, WebP and PNG (APNG) read one frame at a time, and upscaled frames written back
as an animation with the same frame durations and loop count.

Pillow hands over every frame whole, with the previous frames' disposal and blending already applied, so
each frame is upscaled as the picture a viewer saw at that moment and written whole: the animation looks
the same at the new size. (Frames are not upscaled as their stored sub-rectangles: at a non-integer scale
their offsets would not land on whole pixels.) The writers merge consecutive frames that are identical,
adding their durations. Multi-page TIFFs and MPO JPEGs are not animations: their first page is used.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from model.imageio import DecodeCancelledError, layout_of, open_checked, probe
from model.memory import ImageLayout
from model.picture import ImageDecodeError, ImageTooLargeError, Picture, picture_from_pil, valid_icc

ANIMATED_FORMATS = frozenset({"gif", "webp", "png"})
ANIMATION_OUTPUTS = {"png": "PNG", "webp": "WEBP", "gif": "GIF"}
# Output pixels over all frames: the upscaled frames are held until the writer has them all (RGBA, 4.5 bytes a
# pixel), and the writers copy them: the peak is 10-14 bytes a pixel, ~460 MB at this default
# (bench/animation_memory.py; APNG highest, WebP lowest).
MAX_ANIMATION_PIXELS = 32 * 2**20
# PNG's APNG options: each frame replaces the canvas (whole frames, so no earlier frame may show through).
APNG_DISPOSE_NONE, APNG_BLEND_SOURCE = 0, 0
GIF_DISPOSE_BACKGROUND = 2


@dataclass(frozen=True)
class Animation:
    """An animated upload, known from its header: its frames are decoded one at a time by decoded_frames()."""

    data: bytes = field(repr=False)  # the upload, never printed
    format: str  # "gif", "webp" or "png"
    size: tuple[int, int]  # (height, width) of the canvas: every frame's size
    frames: int
    loop: int | None  # as the file says (0: forever); None: a GIF without a loop extension, played once
    icc_profile: bytes | None

    def output_pixels(self, out_size: tuple[int, int]) -> int:
        return self.frames * out_size[0] * out_size[1]


def open_animation(data: bytes, max_pixels: int | None = None, max_frames: int | None = None) -> Animation | None:
    """The upload as an Animation when it is an animated GIF, WebP or PNG, else None (a still image, or a
    multi-page format whose first page is used); every header limit is checked as decode() checks it."""
    return animation_of(data, *open_checked(data, max_pixels, None, None, max_frames))


def animation_of(data: bytes, img: Image.Image, fmt: str, frames: int) -> Animation | None:
    """open_animation's answer for an image open_checked() has opened from `data`."""
    if frames < 2 or fmt not in ANIMATED_FORMATS:
        return None
    loop = img.info.get("loop")
    return Animation(data, fmt, (img.height, img.width), frames, None if loop is None else int(loop),
                     valid_icc(img.info.get("icc_profile")))


def read_header(data: bytes, max_pixels: int | None, max_jpeg_scans: int | None, max_frames: int | None,
                animations: bool) -> tuple[ImageLayout, Animation | None]:
    """Every header limit checked in one pass over the header -> the first frame's layout (its memory,
    model/memory.py) and, if `animations` and the upload is one, the Animation (else None)."""
    img, fmt, frames = open_checked(data, max_pixels, max_jpeg_scans, max_frames=max_frames)
    return layout_of(img, fmt, data), animation_of(data, img, fmt, frames) if animations else None


def check_output_pixels(animation: Animation, out_size: tuple[int, int], limit: int) -> None:
    """ImageTooLargeError (413) when all the frames at out_size are more than `limit` pixels: before decoding."""
    total = animation.output_pixels(out_size)
    if total > limit:
        raise ImageTooLargeError(
            f"the animation would be {animation.frames} frames of {out_size[1]}x{out_size[0]} = {total:,} output "
            f"pixels in all; the limit (IMDN_MAX_ANIMATION_PIXELS) is {limit:,}: ask a smaller size, or "
            "frames=first for the first frame only")


def decoded_frames(animation: Animation, check: Callable[[], None] | None = None) -> Iterator[tuple[Picture, int]]:
    """(Picture, duration in ms) for each frame, whole (disposal and blending applied), decoded one at a time;
    `check` runs before each frame and each block read. Damage or a frame that changes size: ImageDecodeError."""
    img, _ = probe(animation.data, check)  # its limits were checked by open_animation
    for index in range(animation.frames):
        if check is not None:
            check()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    img.seek(index)
                except EOFError:  # fewer frames than counted (a damaged tail): what there is
                    if index == 0:
                        raise
                    return
                # Before its pixels are decoded: a GIF frame larger than its screen grows Pillow's canvas.
                if (img.height, img.width) != animation.size:
                    raise ImageDecodeError(f"frame {index + 1} is {img.width}x{img.height}, the animation "
                                           f"{animation.size[1]}x{animation.size[0]}: frames must keep one size")
                img.load()  # WebP sets a frame's duration as it reads the frame
                duration = int(img.info.get("duration") or 0)
                # RGBA for every frame: frames of one file come in different modes (a GIF's first is P or L).
                picture = picture_from_pil(img.convert("RGBA"))
        except (ImageDecodeError, DecodeCancelledError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the file is at fault
            if check is not None:
                check()  # the request's end first, if that is what stopped the decoder
            raise ImageDecodeError(f"frame {index + 1} of the {animation.format} animation is truncated or "
                                   f"corrupt ({type(exc).__name__}: {exc})") from exc
        picture.icc_profile = animation.icc_profile
        yield picture, duration


def encode_animation(frames: list[Image.Image], durations: list[int], loop: int | None, fmt: str,
                     quality: int = 90, png_level: int = 1, icc_profile: bytes | None = None) -> bytes:
    """Whole RGBA frames -> an animated PNG (APNG), WebP or GIF with these durations (ms) and loop count.
    Frames whose alpha is opaque throughout are written as RGB (`frames` is converted in place, so the caller's
    list holds one copy). loop None (play once) stays so in each format."""
    if fmt not in ANIMATION_OUTPUTS:
        raise ValueError(f"{fmt} cannot hold an animation; use one of {', '.join(ANIMATION_OUTPUTS)}")
    if all(np.asarray(f.getchannel("A")).min() == 255 for f in frames if f.mode == "RGBA"):
        for index, frame in enumerate(frames):  # in place: each RGBA frame is freed as its RGB copy is made
            frames[index] = frame.convert("RGB") if frame.mode == "RGBA" else frame
    options: dict[str, object] = {"save_all": True, "append_images": frames[1:], "duration": durations}
    if fmt == "gif":
        if loop is not None:
            options["loop"] = loop  # omitted: no loop extension, played once
        options["disposal"] = GIF_DISPOSE_BACKGROUND  # a transparent pixel shows the page, not the last frame
    else:
        options["loop"] = 1 if loop is None else loop  # WebP and APNG count plays; 0 is forever in all three
        if icc_profile:
            options["icc_profile"] = icc_profile
    if fmt == "png":
        options.update(compress_level=png_level, disposal=APNG_DISPOSE_NONE, blend=APNG_BLEND_SOURCE)
    elif fmt == "webp":
        options["quality"] = quality
    buffer = io.BytesIO()
    frames[0].save(buffer, format=ANIMATION_OUTPUTS[fmt], **options)
    return buffer.getvalue()
