"""The decode deadline (issue 30, item 4), on a real uvicorn process: an upload whose decoding runs past
IMDN_DECODE_TIMEOUT_S is stopped there and answered 422, and the server goes on serving. Before, a decode had
only the whole request's deadline (300 s by default) and a slow file held its thread all that time. (BMP's
RLE, Pillow's one Python decoder among the accepted formats, is now linear: tests/model/test_bmp_rle.py.)"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability.reliability_support import RealServer, check_error, check_image, encode, noise

DEADLINE_S = 0.1


def slow_to_decode() -> bytes:
    """A 4096x4096 PNG (0.8 MB) that takes about 0.4 s to decode here (to float planes): a large photo's
    cost, within every other limit."""
    y = np.arange(4096, dtype=np.uint16)[:, None]
    x = np.arange(4096, dtype=np.uint16)[None, :]
    pixels = np.stack([x ^ y, x * 3 + y, (x >> 2) * (y >> 3)], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


@pytest.fixture(scope="module")
def server(weights_dir: Path, workdir: Path) -> Iterator[RealServer]:
    with RealServer(weights_dir, workdir, IMDN_MODELS="x2", IMDN_DECODE_TIMEOUT_S=str(DEADLINE_S),
                    IMDN_REQUEST_TIMEOUT_S="30") as started:
        started.wait_ready()
        yield started


def upscale(server: RealServer, image: bytes) -> httpx.Response:
    try:
        return httpx.post(f"{server.url}/v1/superresolve?scale=2", content=image,
                          headers={"content-type": "image/png"}, timeout=60)
    except httpx.HTTPError as exc:
        raise AssertionError(f"{exc!r}\n{server.output()}") from exc


def test_a_decode_past_its_deadline_is_422(server: RealServer) -> None:
    image = slow_to_decode()
    started = time.monotonic()
    response = upscale(server, image)
    problem = check_error(response, {422})
    assert "IMDN_DECODE_TIMEOUT_S" in problem["detail"] and f"{DEADLINE_S:g} s" in problem["detail"], problem
    assert time.monotonic() - started < 20, "the decode was not stopped at its deadline"
    # The server is unharmed, and an ordinary upload decodes well within the deadline.
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    check_image(upscale(server, encode(noise(12, 16))), (32, 24))
