"""Animations: which uploads are animations, their frames one at a time, and animations written back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.animation import Animation, check_output_pixels, decoded_frames, encode_animation, open_animation
from model.picture import ImageTooLargeError, to_array
from tests.samples import animated_file, read_animation

DURATIONS = [100, 250, 400]


def distinct_frames(height: int = 12, width: int = 16, count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize(("fmt", "loop"), [("GIF", 0), ("GIF", 3), ("WEBP", 0), ("WEBP", 2), ("PNG", 0)])
def test_animations_are_recognised_with_their_loop(fmt: str, loop: int) -> None:
    animation = open_animation(animated_file(fmt, distinct_frames(), DURATIONS, loop))
    assert animation is not None
    assert (animation.format, animation.size, animation.frames, animation.loop) == (fmt.lower(), (12, 16), 3, loop)


def test_a_gif_without_a_loop_extension_plays_once() -> None:
    animation = open_animation(animated_file("GIF", distinct_frames(), DURATIONS, loop=None))
    assert animation is not None and animation.loop is None


def test_stills_and_multi_page_files_are_not_animations() -> None:
    buffer = io.BytesIO()
    Image.fromarray(distinct_frames()[0]).save(buffer, "PNG")
    assert open_animation(buffer.getvalue()) is None
    tiff = io.BytesIO()
    pages = [Image.fromarray(f) for f in distinct_frames()]
    pages[0].save(tiff, "TIFF", save_all=True, append_images=pages[1:])
    assert open_animation(tiff.getvalue()) is None  # its first page is used, as before
    assert open_animation(animated_file("GIF", distinct_frames(count=1), [100])) is None


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_frames_come_whole_with_their_durations(fmt: str) -> None:
    source = distinct_frames()
    animation = open_animation(animated_file(fmt, source, DURATIONS))
    assert animation is not None
    decoded = list(decoded_frames(animation))
    assert [duration for _, duration in decoded] == DURATIONS
    for (picture, _), original in zip(decoded, source, strict=True):
        assert picture.size == (12, 16) and picture.channels == 4
        array = to_array(picture.color, picture.alpha, picture.gray, picture.bits)
        if fmt != "GIF":  # lossless formats give the frames back exactly (a GIF quantises to 256 colours)
            np.testing.assert_array_equal(array[..., :3], original)


def test_frames_stop_when_the_request_ends() -> None:
    animation = open_animation(animated_file("GIF", distinct_frames(), DURATIONS))
    assert animation is not None
    seen = 0

    def check() -> None:
        if seen >= 1:
            raise TimeoutError("the request ended")

    with pytest.raises(TimeoutError):
        for _ in decoded_frames(animation, check):
            seen += 1
    assert seen == 1


@pytest.mark.parametrize("out", ["png", "webp", "gif"])
@pytest.mark.parametrize("loop", [0, 2, None])
def test_written_animations_keep_frames_durations_and_loop(out: str, loop: int | None) -> None:
    images = [Image.fromarray(f).convert("RGBA") for f in distinct_frames(24, 32)]
    data = encode_animation(images, DURATIONS, loop, out)
    fmt, count, durations, written_loop, size = read_animation(data)
    assert (fmt, count, durations, size) == ({"png": "PNG", "webp": "WEBP", "gif": "GIF"}[out], 3, DURATIONS, (32, 24))
    # Played once stays played once: no loop extension in a GIF, one play in WebP and APNG.
    assert written_loop == (loop if loop is not None else (None if out == "gif" else 1))


@pytest.mark.parametrize("out", ["png", "webp", "gif"])
def test_transparency_is_kept_and_opaque_frames_lose_their_alpha(out: str) -> None:
    frames_rgba = [np.dstack([f, np.full(f.shape[:2], 255, np.uint8)]) for f in distinct_frames()]
    frames_rgba[1][:4, :4, 3] = 0
    data = encode_animation([Image.fromarray(f) for f in frames_rgba], DURATIONS, 0, out)
    img = Image.open(io.BytesIO(data))
    img.seek(1)
    assert img.convert("RGBA").getpixel((0, 0))[3] == 0 and img.convert("RGBA").getpixel((8, 8))[3] == 255
    opaque = encode_animation([Image.fromarray(f).convert("RGBA") for f in distinct_frames()], DURATIONS, 0, out)
    assert Image.open(io.BytesIO(opaque)).mode in ("RGB", "P")


def test_jpeg_cannot_hold_an_animation() -> None:
    with pytest.raises(ValueError, match="jpeg cannot hold an animation"):
        encode_animation([Image.new("RGB", (4, 4))] * 2, [100, 100], 0, "jpeg")


def test_output_pixels_over_all_frames_are_bounded() -> None:
    animation = Animation(b"", "gif", (100, 100), 10, 0, None)
    check_output_pixels(animation, (200, 200), 400_000)  # 10 x 40,000: at the limit
    with pytest.raises(ImageTooLargeError, match="10 frames of 200x201 = 402,000 .*IMDN_MAX_ANIMATION_PIXELS"):
        check_output_pixels(animation, (201, 200), 400_000)
