"""Animated GIF, WebP and APNG through a real uvicorn process (issue 29, item 5): every frame upscaled, frame
count, durations and loop kept; frames=first as before; animations past IMDN_MAX_ANIMATION_PIXELS or
IMDN_MAX_FRAMES refused quickly with 413/422, the server still up; /metrics and the access log count frames."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability.reliability_support import RealServer, check_error, check_image
from tests.samples import animated_file, many_frame_gif, read_animation, smooth_image

DURATIONS = [80, 160, 240]
# 3 frames of 24x16 at x2 = 3 x 1,536 = 4,608 output pixels: 5,000 lets them through, and not a 4th frame.
ANIMATION_PIXELS = 5_000
ANSWER_WITHIN_S = 20.0  # generous: a refusal before decoding takes well under a second


@pytest.fixture(scope="module")
def server(weights_dir: Path, workdir: Path) -> Iterator[RealServer]:
    with RealServer(weights_dir, workdir, IMDN_MODELS="x2", IMDN_MAX_ANIMATION_PIXELS=str(ANIMATION_PIXELS)) as server:
        server.wait_ready()
        yield server


def frames(count: int = 3) -> list[np.ndarray]:
    return [smooth_image(16, 24, seed=seed) for seed in range(count)]


def post(server: RealServer, data: bytes, query: str = "") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{server.url}/v1/superresolve?scale=2&content=clean&{query}", content=data,
                          headers={"content-type": "application/octet-stream"}, timeout=120)
    return response, time.monotonic() - started


def frames_total(server: RealServer) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("imdn_frames_total"))


@pytest.mark.parametrize(("source", "out", "media"), [
    ("GIF", "", "PNG"),  # the default output: APNG
    ("WEBP", "format=webp", "WEBP"),
    ("PNG", "format=gif", "GIF"),
    ("GIF", "format=webp", "WEBP"),
])
def test_every_frame_is_upscaled_with_its_duration_and_loop(server: RealServer, source: str, out: str,
                                                            media: str) -> None:
    before = frames_total(server)
    response, _ = post(server, animated_file(source, frames(), DURATIONS, loop=2), out)
    check_image(response, (48, 32), media.lower())
    fmt, count, durations, loop, size = read_animation(response.content)
    assert (fmt, count, durations, loop, size) == (media, 3, DURATIONS, 2, (48, 32))
    assert response.headers["x-frames"] == "3" and "x-frames-dropped" not in response.headers
    assert response.headers["x-output-size"] == "48x32"
    # Each frame is the upscaled frame, not a copy of the first: the frames differ as the inputs do.
    img = Image.open(io.BytesIO(response.content))
    seen = []
    for index in range(3):
        img.seek(index)
        seen.append(np.asarray(img.convert("RGB"), np.int16))
    assert all(np.abs(seen[i] - seen[i + 1]).mean() > 1 for i in range(2))
    assert frames_total(server) == before + 3
    assert '"frames": 3' in server.output() or "frames=3" in server.output()


def test_frames_first_keeps_the_first_frame_only(server: RealServer) -> None:
    response, _ = post(server, animated_file("WEBP", frames(), DURATIONS), "frames=first")
    check_image(response, (48, 32))
    assert read_animation(response.content)[1] == 1
    assert response.headers["x-frames-dropped"] == "2" and "x-frames" not in response.headers


def test_an_animation_cannot_be_a_jpeg(server: RealServer) -> None:
    problem = check_error(post(server, animated_file("GIF", frames(), DURATIONS), "format=jpeg")[0], {400})
    assert "frames=first" in problem["detail"]
    first = post(server, animated_file("GIF", frames(), DURATIONS), "format=jpeg&frames=first")[0]
    check_image(first, (48, 32), "jpeg")


def test_past_the_animation_pixel_limit_is_413_before_decoding(server: RealServer) -> None:
    data = animated_file("GIF", frames(4), DURATIONS + [320])  # 4 x 1,536 output pixels > 5,000
    response, elapsed = post(server, data)
    problem = check_error(response, {413})
    assert "IMDN_MAX_ANIMATION_PIXELS" in problem["detail"] and "4 frames of 48x32" in problem["detail"]
    assert elapsed < ANSWER_WITHIN_S
    check_image(post(server, data, "frames=first")[0], (48, 32))  # one frame is within every limit


def test_ten_thousand_frames_are_refused_quickly_and_the_server_stays_up(server: RealServer) -> None:
    response, elapsed = post(server, many_frame_gif(10_000))
    problem = check_error(response, {413, 422})
    assert "IMDN_MAX_FRAMES" in problem["detail"]
    assert elapsed < ANSWER_WITHIN_S
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    check_image(post(server, animated_file("GIF", frames(), DURATIONS))[0], (48, 32))
