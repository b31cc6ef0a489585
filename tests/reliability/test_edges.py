"""Edge hardening (issue #15), one section per class of problem an adversarial pass found: slow clients,
decode cost, malformed ancillary data, disconnects, metric labels, drain, log injection, foreign formats
and responses cut short.

Real uvicorn processes on loopback (raw sockets where the framing matters), with settings shortened only
where the default would make a test slow (grace periods, timeouts); every request has a deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.imageio import decode
from model.picture import ImageDecodeError
from tests.reliability.reliability_support import (
    PNG_SIGNATURE,
    RealServer,
    check_error,
    check_image,
    check_problem,
    encode,
    hand_png,
    noise,
    png_chunk,
    raw_http,
)

SMALL_PNG = encode(noise(16, 16, seed=5))
GRACE_S = 1.0
HEADER_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(weights_dir: Path, workdir: Path) -> Iterator[RealServer]:
    """Default limits and admission (2 running, 8 queued), a short slow-client grace and header timeout,
    stored (uncompressed) PNGs so that outputs are large."""
    with RealServer(weights_dir, workdir, IMDN_MODELS="x2", IMDN_CLIENT_GRACE_S=str(GRACE_S),
                    IMDN_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), IMDN_PNG_COMPRESS_LEVEL="0") as server:
        server.wait_ready()
        yield server


def post(server: RealServer, data: bytes, query: str = "scale=2", content_type: str = "image/png",
         timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/superresolve?{query}", content=data,
                      headers={"content-type": content_type}, timeout=timeout)


def head(length: int, path: str = "/v1/superresolve?scale=2", close: bool = True) -> bytes:
    text = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n"
    return (text + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def log_lines_since(server: RealServer, mark: int) -> list[str]:
    return server.output()[mark:].splitlines()


def wait_for_log(server: RealServer, mark: int, pattern: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_lines_since(server, mark):
            if re.search(pattern, line):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r}:\n" + "\n".join(log_lines_since(server, mark)[-20:]))


# --- 1. slow clients hold no slot ------------------------------------------------------------------


def test_trickling_uploads_do_not_lock_out_a_normal_client(server: RealServer) -> None:
    """A dozen uploads at 1 byte/s (more than the 2 running + 8 queued places) hold no processing slot or
    queue place: a normal client is served meanwhile, and each trickler gets 408 once its grace is over."""
    results: list[object] = [None] * 12

    def trickle(i: int) -> None:
        try:
            results[i] = raw_http(server.port, head(len(SMALL_PNG)), [bytes([b]) for b in SMALL_PNG],
                                  delay=1.0, timeout=GRACE_S + 20)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=trickle, args=(i,), daemon=True) for i in range(12)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every trickler has sent its headers and is in the middle of its body
    check_image(post(server, SMALL_PNG), (32, 32))
    for thread in threads:
        thread.join(GRACE_S + 25)
    for result in results:
        assert isinstance(result, tuple), f"a trickling upload got no answer: {result!r}"
        status, headers, body = result
        problem = check_problem(status, headers.get("content-type", ""), body, {408})
        assert "too slow" in problem["detail"], problem


def test_partial_headers_are_cut_off(server: RealServer) -> None:
    """A client that never finishes its request headers loses the connection (IMDN_HEADER_TIMEOUT_S)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HEADER_TIMEOUT_S + 10) as sock:
        sock.sendall(b"POST /v1/superresolve HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 10
        closed = False
        while time.monotonic() < deadline and not closed:
            with contextlib.suppress(OSError):
                sock.sendall(b"X")  # one byte of a header name now and then: still no complete request
            try:
                sock.settimeout(0.5)
                closed = sock.recv(1024) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed, "the connection with unfinished headers stayed open"


def test_partial_headers_of_a_second_request_are_cut_off(server: RealServer) -> None:
    """Idle keep-alive between requests is uvicorn's to time (long, for load balancers); once the next
    request's first byte arrives, its headers have IMDN_HEADER_TIMEOUT_S like the first request's."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HEADER_TIMEOUT_S + 10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        sock.settimeout(HEADER_TIMEOUT_S + 10)
        closed = False
        while not closed and time.monotonic() - started < HEADER_TIMEOUT_S + 10:
            try:
                closed = sock.recv(1024) == b""  # the rest of the first response may come first
            except OSError:
                closed = True
        assert closed, "the connection with an unfinished second request stayed open"
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 5


def test_a_client_that_does_not_read_its_response_is_cut(server: RealServer) -> None:
    """The mirror image of a slow upload: a client that stops reading would hold its processing slot (the
    work waits for it); after the grace period its response is cut, and the slot is free again."""
    # x2 then bicubic to 1536x1536, stored: 7 MB, more than the socket buffers hold, for little compute.
    data = encode(noise(192, 192, seed=8))
    mark = len(server.output())
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(head(len(data), "/v1/superresolve?scale=8&model=x2") + data)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        line = wait_for_log(server, mark, r"service\.access.*POST", timeout=60)  # and read nothing more
    assert "outcome=cut cut_reason=slow_client" in line, line
    text = "\n".join(log_lines_since(server, mark))
    assert " ERROR " not in text and "Traceback" not in text, text  # one line says it all
    # Once the cut is logged the slot is already free: the body's clean-up runs before the log line.
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "imdn_requests_in_flight 0.0" in metrics
    check_image(post(server, SMALL_PNG), (32, 32))


# --- 2. bounded decode cost ----------------------------------------------------------------------


def progressive_jpeg_with_repeated_scan(repeats: int) -> bytes:
    """A small progressive JPEG whose last scan (SOS to EOI) is repeated: legal-looking, costly to decode."""
    data = encode(Image.fromarray(noise(64, 64, seed=2)), "JPEG", quality=90, progressive=True)
    last_sos = data.rindex(b"\xff\xda")
    assert data.endswith(b"\xff\xd9")
    scan = data[last_sos:-2]
    return data[:last_sos] + scan * repeats + b"\xff\xd9"


def test_progressive_jpeg_scan_bomb_refused(server: RealServer) -> None:
    bomb = progressive_jpeg_with_repeated_scan(2000)
    problem = check_error(post(server, bomb, content_type="image/jpeg", timeout=120), {422})
    assert "scans" in problem["detail"], problem
    # An ordinary progressive JPEG still decodes.
    check_image(post(server, progressive_jpeg_with_repeated_scan(1), content_type="image/jpeg"), (128, 128))


def test_output_limit_decided_from_the_header(server: RealServer) -> None:
    """A 4100x4096 header at x2 (67.2 MP out, over the 67.1 MP limit) is refused before its pixels are read:
    the pixels here are garbage, and the answer is the 413 the header decides, not the 422 decoding would."""
    lying = hand_png(4100, 4096, rows=b"\x00" * 64)
    problem = check_error(post(server, lying, "scale=2"), {413})
    assert "output would be 8200x8192" in problem["detail"], problem


def paeth_png16(width: int, height: int, channels: int = 3) -> bytes:
    """A 16-bit colour PNG, every row Paeth-filtered: what made the old per-pixel unfilter cost ~15 s/MP."""
    rng = np.random.default_rng(0)
    stride = width * channels * 2
    rows = b"".join(b"\x04" + bytes(rng.integers(0, 4, stride, dtype=np.uint8)) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows, 9)) + \
        png_chunk(b"IEND", b"")


def reference_unfilter(data: bytes, width: int, height: int, channels: int) -> np.ndarray:
    """The PNG spec's reconstruction, written out plainly, for a non-interlaced 16-bit image."""
    raw = zlib.decompress(b"".join(p for _, k, p in _chunks(data) if k == b"IDAT"))
    bpp, stride = 2 * channels, 2 * channels * width
    out = np.zeros((height, stride), np.int64)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1)
        for x in range(stride):
            a = out[y, x - bpp] if x >= bpp else 0
            b = out[y - 1, x] if y else 0
            c = out[y - 1, x - bpp] if y and x >= bpp else 0
            p = a + b - c
            pred = [0, a, b, (a + b) // 2, a if abs(p - a) <= min(abs(p - b), abs(p - c)) else
                    (b if abs(p - b) <= abs(p - c) else c)][kind]
            out[y, x] = (int(line[x]) + pred) & 0xFF
    return out.astype(np.uint8).view(">u2").reshape(height, width, channels).astype(np.uint16)


def _chunks(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        yield pos, data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_keeps_16_bits_past_a_megapixel(channels: int) -> None:
    """The unfilter runs at C speed, so no size cap sends large 16-bit colour PNGs to the 8-bit path any more
    (the Python unfilter needed one above 1 MP: ~15 s for an 8 KB 1000x1000 file)."""
    width, height = 1100, 1000
    data = paeth_png16(width, height, channels)
    picture = decode(data, 16_800_000)
    assert picture.bits == 16 and picture.size == (height, width)
    # Exact against the spec's reconstruction, on the first rows (the reference is slow Python).
    small = paeth_png16(37, 9, channels)
    expected = reference_unfilter(small, 37, 9, channels)
    got = decode(small)
    values = np.round(np.concatenate([got.color.permute(1, 2, 0).numpy()] +
                                     ([got.alpha.numpy()[:, :, None]] if got.alpha is not None else []), axis=2)
                      * 65535).astype(np.uint16)
    assert np.array_equal(values, expected)


def test_decode_stops_when_its_request_ends() -> None:
    """decode() asks before each block it reads whether to go on; an answer of no ends the decode there,
    half-way through the pixels."""
    from model.imageio import DecodeCancelledError  # (imported here: the module collects on older code)

    data = encode(Image.fromarray(noise(512, 512, seed=4)), "PNG")
    reads = 0

    def count() -> None:
        nonlocal reads
        reads += 1

    decode(data, check=count)
    total, reads = reads, 0
    assert total > 6, total

    def refuse_half_way() -> None:
        count()
        if reads > total // 2:
            raise DecodeCancelledError("the request ended")

    with pytest.raises(DecodeCancelledError):
        decode(data, check=refuse_half_way)
    assert reads == total // 2 + 1


# --- 3. malformed ancillary data: 422, and the connection stays usable -----------------------------


def trns_png(color_type: int, key: bytes) -> bytes:
    width, height, channels = 8, 8, {0: 1, 2: 3}[color_type]
    rows = b"".join(b"\x00" + bytes(range(width * channels)) for _ in range(height))
    return hand_png(width, height, 8, color_type, rows, extra=png_chunk(b"tRNS", key))


@pytest.mark.parametrize("name,data", [
    ("rgb-300", trns_png(2, struct.pack(">HHH", 300, 0, 0))),
    ("gray-300", trns_png(0, struct.pack(">H", 300))),
    ("gray-65535", trns_png(0, struct.pack(">H", 65535))),
], ids=["rgb-300", "gray-300", "gray-65535"])
def test_out_of_range_transparency_key_is_422_on_a_live_connection(server: RealServer, name: str,
                                                                   data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        stream = sock.makefile("rb")
        for body, expected in ((data, 422), (SMALL_PNG, 200)):
            sock.sendall(head(len(body), close=False) + body)
            status_line = stream.readline()
            headers = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            status = int(status_line.split()[1])
            assert status == expected, (name, status_line, headers)
            if status == 422:
                payload = stream.read(int(headers["content-length"]))
                problem = check_problem(status, headers["content-type"], payload, {422})
                assert "tRNS" in problem["detail"], problem
                assert headers.get("connection") != "close"
            else:  # the same connection still answers
                assert headers.get("transfer-encoding") == "chunked" or "content-length" in headers
                return


def test_decode_errors_never_escape_as_other_exceptions() -> None:
    """Mutations of a PNG with a tRNS key: every failure of decoding is an ImageDecodeError."""
    rng = np.random.default_rng(1)
    base = trns_png(2, struct.pack(">HHH", 1, 2, 3))
    for _ in range(300):
        data = bytearray(base)
        for at in rng.integers(8, len(data), 3):
            data[at] = int(rng.integers(0, 256))
        with contextlib.suppress(ImageDecodeError):
            decode(bytes(data), 1_000_000)


# --- 4 and 9. clients that leave: logged once, with the bytes, never a 5xx ---------------------------


def test_disconnect_mid_upload_is_a_client_close(server: RealServer) -> None:
    mark = len(server.output())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head(100_000) + b"\x89PNG" + b"\x00" * 996)
        time.sleep(0.3)
    line = wait_for_log(server, mark, r"service\.access.*outcome=client_closed")
    assert "status=499" in line and "bytes_in=1000" in line, line
    time.sleep(0.3)
    text = "\n".join(log_lines_since(server, mark))
    assert "Traceback" not in text and "ClientDisconnect" not in text, text
    assert sum("service.access" in line for line in log_lines_since(server, mark)) == 1, text
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert not re.search(r'imdn_http_requests_total\{[^}]*route="/v1/superresolve"[^}]*status="5', metrics), metrics


def test_client_leaving_mid_download_is_logged_as_cut_short(server: RealServer) -> None:
    """The access log says the response did not complete, and how many bytes had gone out."""
    data = encode(noise(96, 96, seed=9))  # x2 then bicubic: 768x768, 1.7 MB stored
    mark = len(server.output())
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head(len(data), "/v1/superresolve?scale=8&model=x2") + data)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, at once
    line = wait_for_log(server, mark, r"service\.access.*POST", timeout=60)
    assert "status=200" in line and "outcome=cut cut_reason=client_closed" in line, line
    sent = int(re.search(r"bytes_out=(\d+)", line).group(1))  # type: ignore[union-attr]
    assert 0 < sent < 768 * 768 * 3, line
    text = "\n".join(log_lines_since(server, mark))
    assert " ERROR " not in text and "Traceback" not in text, text


# --- 5. metric labels from bounded sets ------------------------------------------------------------


# Methods the httptools parser knows (WebDAV and friends: it refuses others) and invented ones (h11 takes any).
ODD_METHODS = ["PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE", "REPORT",
               "MKACTIVITY", "CHECKOUT", "MERGE", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "LINK", "UNLINK", "TRACE",
               "CONNECT"] + [f"XMETHOD{i}" for i in range(20)]


def test_invented_methods_do_not_grow_metrics(server: RealServer) -> None:
    before = httpx.get(f"{server.url}/metrics", timeout=5).text
    for i, method in enumerate(ODD_METHODS):
        with contextlib.suppress(TimeoutError, OSError, AssertionError):
            target = "127.0.0.1:80" if method == "CONNECT" else "/v1/superresolve"
            raw_http(server.port, f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                     .encode(), timeout=5)
            raw_http(server.port, f"GET /invented/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
                     timeout=5)
    after = httpx.get(f"{server.url}/metrics", timeout=5).text
    methods = set(re.findall(r'method="([^"]*)"', after))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"}, methods
    routes = set(re.findall(r'route="([^"]*)"', after))
    assert not any("invented" in r for r in routes), routes
    assert len(after) < len(before) + 10_000, (len(before), len(after))


# --- 7. log injection -----------------------------------------------------------------------------


def test_control_characters_in_logged_fields_are_escaped(server: RealServer) -> None:
    mark = len(server.output())
    forged = "2026-01-01 00:00:00,000 ERROR service: FAKE"
    httpx.get(f"{server.url}/nope%0a{forged.replace(' ', '%20')}%0d%1b[31m", timeout=5)
    line = wait_for_log(server, mark, r"service\.access.*GET")
    lines = log_lines_since(server, mark)
    assert not any(line.startswith(forged) for line in lines), lines
    assert "\\n2026-01-01" in line and "\x1b" not in line, line


# --- 8. only the documented formats -----------------------------------------------------------------


def foreign(fmt: str) -> bytes:
    img = Image.fromarray(noise(16, 16, seed=6))
    if fmt in ("PCX", "SGI", "TGA", "PPM", "IM", "MSP", "XBM", "DDS", "ICO", "SPIDER", "QOI", "JPEG2000"):
        img = img.convert({"MSP": "1", "XBM": "1", "SPIDER": "F"}.get(fmt, "RGB"))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


FOREIGN = ["TGA", "PCX", "SGI", "PPM", "ICO", "IM", "MSP", "XBM", "DDS", "SPIDER", "QOI", "JPEG2000"]


@pytest.mark.parametrize("fmt", FOREIGN)
def test_formats_outside_the_list_are_415(server: RealServer, fmt: str) -> None:
    try:
        data = foreign(fmt)
    except (OSError, KeyError, ValueError) as exc:
        pytest.skip(f"this Pillow cannot write {fmt}: {exc}")
    assert Image.open(io.BytesIO(data)).format is not None  # Pillow itself would read it
    check_error(post(server, data, content_type="application/octet-stream"), {415})


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_documented_formats_still_decode(server: RealServer, fmt: str) -> None:
    img = Image.fromarray(noise(16, 16, seed=6))
    check_image(post(server, encode(img, fmt), content_type="application/octet-stream"), (32, 32))


# --- 6. drain: 503 or a cut stream at the deadline, exit 0 ------------------------------------------

DRAIN_S = 2.0


@pytest.fixture(scope="module")
def drained(weights_dir: Path, workdir: Path) -> Iterator[dict]:
    """One long streamed request running and three queued behind it (one slot), plus a forged log line
    (JSON logs); SIGTERM; the drain deadline passes with all four unfinished."""
    server = RealServer(weights_dir, workdir, IMDN_MODELS="x2", IMDN_MAX_CONCURRENT="1", IMDN_TILE_SIZE="32",
                        IMDN_DRAIN_TIMEOUT_S=str(DRAIN_S), IMDN_LOG_FORMAT="json")
    server.wait_ready()
    big = encode(noise(1024, 1024, seed=3))
    streaming = threading.Event()

    def stream() -> dict:
        received, error = 0, None
        try:
            with httpx.stream("POST", f"{server.url}/v1/superresolve?scale=2", content=big,
                              headers={"content-type": "image/png"}, timeout=120) as response:
                status, headers = response.status_code, dict(response.headers)
                for chunk in response.iter_raw():
                    received += len(chunk)
                    streaming.set()
        except httpx.HTTPError as exc:
            error = exc
        return {"status": status, "headers": headers, "received": received, "error": error}

    try:
        httpx.get(f"{server.url}/nope%0a%7B%22level%22:%22error%22%7D", timeout=5)
        with ThreadPoolExecutor(4) as executor:
            running = executor.submit(stream)
            assert streaming.wait(90), "the first request never started streaming"
            queued = [executor.submit(stream) for _ in range(3)]
            time.sleep(1.0)  # uploaded, and waiting for the slot
            server.proc.send_signal(signal.SIGTERM)
            results = [running.result(120)] + [f.result(120) for f in queued]
            returncode = server.proc.wait(60)
        yield {"results": results, "returncode": returncode, "log": server.output()}
    finally:
        server.stop(signal.SIGKILL)


def test_drain_ends_in_503_or_a_cut_stream(drained: dict) -> None:
    running, *queued = drained["results"]
    assert running["status"] == 200 and running["error"] is not None, running  # cut: an incomplete body
    assert running["received"] > 0, running
    for result in queued:
        assert result["status"] == 503 and result["headers"].get("retry-after"), result


def test_drain_exits_zero_and_logs_the_cut(drained: dict) -> None:
    assert drained["returncode"] == 0, drained["log"][-3000:]
    lines = drained["log"].splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert not any(line.startswith('{"level":"error"}') for line in lines), "a forged log line"
    access = [e for e in entries if e.get("logger") == "service.access"]
    cut = [e for e in access if e.get("outcome") == "cut" and e.get("cut_reason") == "drain"]
    assert len(cut) == 1 and cut[0]["status"] == 200 and cut[0]["bytes_out"] > 0, access
    assert sum(e.get("status") == 503 for e in access) == 3, access
    assert not any(e.get("status") == 500 for e in access), access
    assert "Traceback" not in drained["log"], drained["log"][-3000:]
    assert any(e.get("path") == '/nope\n{"level":"error"}' for e in access)  # the forgery stayed one field
