"""Memory comes back (issue 30, item 2), on a real uvicorn process whose cycle collector is switched off: what
a request held is freed by reference counting alone, the moment it ends, whether it was served, failed,
or abandoned by its client. Before: every request's upload stayed in a reference cycle through an exception's
traceback (`read_body`'s end of stream), and a cancelled request's queued model jobs ran on for nobody while
its thread held the decoded picture; the idle server kept gigabytes until the collector happened to run."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.live_service import REPO
from tests.reliability.reliability_support import RealServer, check_error, check_image, encode, noise, png16, png_chunk

URL = "/v1/superresolve"
SMALL = encode(noise(12, 16, seed=3))
# 20 MB uploads that decode to 16x12: an ancillary chunk that decoders skip.
BULKY = SMALL[:33] + png_chunk(b"teSt", bytes(20 * 2**20)) + SMALL[33:]
# Memory a finished request may leave behind: the allocator's free heap (MALLOC_TRIM_THRESHOLD_, 32 MB), caches.
SLACK_MB = 80
IDLE_WAIT_S = 10.0


def big_picture() -> bytes:
    """A 2048x2048 16-bit RGBA PNG: 60 KB to send, ~200 MB of float planes once decoded."""
    pixels = np.zeros((2048, 2048, 4), np.uint16)
    pixels[..., 3] = 65535
    pixels[::7, ::5, 0] = 1234
    return png16(pixels)


@pytest.fixture(scope="module")
def collector_off(weights_dir: Path, workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """Two slots, so two requests hold decoded pictures (one at work, one waiting for the model pool) while
    the rest wait undecoded; gc.disable() from a sitecustomize on the child's path, so nothing is freed
    unless reference counting frees it."""
    site = tmp_path_factory.mktemp("gc_off")
    (site / "sitecustomize.py").write_text("import gc\ngc.disable()\n")
    server = RealServer(weights_dir, workdir, IMDN_MODELS="x2", IMDN_MAX_CONCURRENT="2",
                        # small batches: the one already running when its client leaves ends soon
                        IMDN_MEMORY_BUDGET_MB="64", PYTHONPATH=f"{site}:{REPO}")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def mb(server: RealServer) -> int:
    return server.rss_kb() // 1024


def settles_near(server: RealServer, baseline: int) -> tuple[bool, list[int]]:
    """Does the idle server's RSS come back within SLACK_MB of `baseline` in IDLE_WAIT_S? -> (yes, the trace)."""
    trace = []
    deadline = time.monotonic() + IDLE_WAIT_S
    while time.monotonic() < deadline:
        trace.append(mb(server))
        if trace[-1] <= baseline + SLACK_MB:
            return True, trace
        time.sleep(0.25)
    return False, trace


def test_abandoned_requests_free_their_pictures(collector_off: RealServer) -> None:
    """Four clients send a 2048x2048 16-bit RGBA PNG (two decoded, one of them at work; two queued) and
    hang up: the idle server is back near where it started within 10 s."""
    server = collector_off
    baseline = mb(server)
    image = big_picture()
    head = (f"POST {URL}?scale=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(image)}\r\n\r\n").encode()
    clients = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    peak = baseline
    try:
        for client in clients:
            client.sendall(head + image)
        until = time.monotonic() + 5  # two decoded, one at work in the model pool
        while time.monotonic() < until:
            peak = max(peak, mb(server))
            time.sleep(0.1)
    finally:
        for client in clients:
            client.close()
    assert peak >= baseline + 250, f"the burst never grew RSS ({baseline} -> {peak} MB): it tests nothing"
    settled, trace = settles_near(server, baseline)
    assert settled, f"idle RSS stayed above {baseline} + {SLACK_MB} MB (peak {peak}): {trace}\n{server.log_tail()}"
    def ended_by_their_clients() -> int:  # 499, or cut if its stream had begun (a heartbeat after 5 s)
        return sum("client_closed" in line for line in server.output().splitlines() if "service.access" in line)

    deadline = time.monotonic() + 10
    while ended_by_their_clients() < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ended_by_their_clients() == 4, server.log_tail()


def test_served_and_failed_requests_leave_nothing(collector_off: RealServer) -> None:
    """Served 20 MB uploads (raw and multipart) and 422s for a truncated 4 MP PNG: each kept its upload
    until the collector ran."""
    server = collector_off
    check_image(httpx.post(f"{server.url}{URL}?scale=2", content=SMALL, headers={"content-type": "image/png"},
                           timeout=60), (32, 24))
    baseline = mb(server)
    truncated = encode(noise(2048, 2048, seed=4))
    truncated = truncated[: len(truncated) * 3 // 4]
    for _ in range(3):
        check_image(httpx.post(f"{server.url}{URL}?scale=2", content=BULKY, headers={"content-type": "image/png"},
                               timeout=60), (32, 24))
        check_image(httpx.post(f"{server.url}{URL}?scale=2", files={"image": ("a.png", BULKY, "image/png")},
                               timeout=60), (32, 24))
        check_error(httpx.post(f"{server.url}{URL}?scale=2", content=truncated,
                               headers={"content-type": "image/png"}, timeout=60), {422})
    settled, trace = settles_near(server, baseline)
    assert settled, f"idle RSS stayed above {baseline} + {SLACK_MB} MB: {trace}\n{server.log_tail()}"
