"""Frame-count bombs (issue 30, item 4): X-Frames-Dropped read Pillow's n_frames, which walks every frame,
a TIFF's IFD chain at a cost that grows with the square of its length (a 4.9 MB TIFF of 48k one-pixel IFDs:
39 s of CPU, then 200). Frames are now counted from the file's structure up to IMDN_MAX_FRAMES (default
1000); more get 422 before any pixel is decoded. On a real uvicorn process with the default limits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from model.structure import MAX_FRAMES
from tests.reliability.reliability_support import RealServer, check_error, check_image
from tests.samples import many_frame_gif, many_ifd_tiff

# Far above what the bounded count takes (well under a second), far below the unbounded walk (39 s for the
# TIFF where it was measured): only a regression to whole-file walks could miss it.
ANSWER_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def server(weights_dir: Path, workdir: Path) -> Iterator[RealServer]:
    with RealServer(weights_dir, workdir, IMDN_MODELS="x2") as server:
        server.wait_ready()
        yield server


def post(server: RealServer, data: bytes, query: str = "") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{server.url}/v1/superresolve?scale=2{query}", content=data,
                          headers={"content-type": "application/octet-stream"}, timeout=120)
    return response, time.monotonic() - started


@pytest.mark.parametrize("make,count", [(many_ifd_tiff, 48_000), (many_frame_gif, 1_000_000)],
                         ids=["tiff-48k-ifds", "gif-1M-frames"])
def test_many_frames_are_refused_quickly(server: RealServer, make: Callable[[int], bytes], count: int) -> None:
    data = make(count)  # 4.8 MB / 15 MB
    response, elapsed = post(server, data)
    problem = check_error(response, {422})
    assert f"more than {MAX_FRAMES} frames" in problem["detail"] and "IMDN_MAX_FRAMES" in problem["detail"]
    assert elapsed < ANSWER_WITHIN_S, f"{elapsed:.1f} s to refuse {count} frames: the count walked the file"
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("make", [many_ifd_tiff, many_frame_gif], ids=["tiff", "gif"])
def test_frame_limit_is_exact(server: RealServer, make: Callable[[int], bytes]) -> None:
    """At the limit the first frame is served (frames=first) and the others counted; one frame more is 422."""
    response, _ = post(server, make(MAX_FRAMES), "&frames=first")
    check_image(response, (2, 2))
    assert response.headers["x-frames-dropped"] == str(MAX_FRAMES - 1)
    check_error(post(server, make(MAX_FRAMES + 1))[0], {422})
