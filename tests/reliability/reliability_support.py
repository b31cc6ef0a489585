"""Shared pieces of the reliability tests: random weights, an in-process app, a real uvicorn process,
image builders for the bad-input corpus, and the checks every response must pass.

Everything here is small and bounded: every request has a timeout, every server is stopped, every
image is a few KB. The machine is shared (2 cores), so servers run with IMDN_THREADS=1.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
from anyio.from_thread import start_blocking_portal
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from service.config import Settings  # noqa: E402
from tests.live_service import ServiceProcess, service_env  # noqa: E402

# Every error status the service documents (plus the router's own 404/405). 500 is a bug, never "documented".
DOCUMENTED_ERRORS = frozenset({400, 401, 404, 405, 408, 413, 415, 422, 429, 431, 503, 504, 507})
PROBLEM_KEYS = ("type", "title", "status", "detail")
REQUEST_TIMEOUT = 30.0


# --- weights and settings --------------------------------------------------------------


def make_settings(weights: Path, **overrides: Any) -> Settings:
    """Settings from the class defaults (never the environment or a .env file) plus overrides.

    CI may export IMDN_* variables (API keys, ...); these tests must not pick them up by accident.
    """
    values: dict[str, Any] = {
        name: field.get_default(call_default_factory=True) for name, field in Settings.model_fields.items()
    }
    values.update(weights=str(weights), device="cpu", backend="torch", threads=1)
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --- the app in this process -------------------------------------------------------------


class InProcessApp:
    """The real app (lifespan included: the pool is loaded and warmed) behind httpx.ASGITransport,
    driven from synchronous tests through an anyio blocking portal. Every request has a deadline."""

    def __init__(self, settings: Settings) -> None:
        from service.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.state = self.app.state.service
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(start_blocking_portal())
        try:
            self._stack.enter_context(
                self.portal.wrap_async_context_manager(self.app.router.lifespan_context(self.app)))
            # raise_app_exceptions=False: an unhandled error must show up as what a client would see (a 500).
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            self.client = httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                            timeout=REQUEST_TIMEOUT)
            self.wait_ready()
        except BaseException:
            self._stack.close()
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        """The pool may be built after the lifespan has started (in the background): wait for it."""
        deadline = time.monotonic() + timeout
        while not (self.state.ready and self.state.pool is not None):
            error = getattr(self.state, "startup_error", None)
            if error:
                raise RuntimeError(f"the app did not start: {error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app was not ready in {timeout} s")
            time.sleep(0.02)

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = REQUEST_TIMEOUT) -> Any:
        """Run an async function on the app's event loop, bounded by `timeout` seconds."""

        async def bounded() -> Any:
            with anyio.fail_after(timeout):
                return await fn(*args)

        return self.portal.call(bounded)

    def request(self, method: str, url: str, *, timeout: float = REQUEST_TIMEOUT, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            return await self.client.request(method, url, **kwargs)

        return self.call(send, timeout=timeout)

    def upscale(self, data: bytes, query: str = "", content_type: str | None = "image/png",
                timeout: float = REQUEST_TIMEOUT, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if content_type is not None:
            headers["content-type"] = content_type
        url = "/v1/superresolve" + (f"?{query}" if query else "")
        return self.request("POST", url, content=data, headers=headers, timeout=timeout, **kwargs)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.portal.call(self.client.aclose)
        self._stack.close()


# --- a real uvicorn process ----------------------------------------------------------------


class RealServer(ServiceProcess):
    """The shared harness with the reliability suite's defaults: the torch backend on one OpenMP thread.

    settings: full environment names (IMDN_...=value).
    """

    def __init__(self, weights: Path | str, workdir: Path, **settings: str) -> None:
        super().__init__(workdir, service_env(weights, IMDN_BACKEND="torch", OMP_NUM_THREADS="1", **settings))

    def wait_ready(self, timeout: float = 90.0) -> float:
        return super().wait_ready(timeout)

    def rss_kb(self) -> int:
        return read_rss_kb(self.pid)


def read_rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def raw_http(port: int, head: bytes, body_parts: Iterable[bytes] = (), *, delay: float = 0.0,
             timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """Send a hand-made HTTP/1.1 request over a raw socket -> (status, headers, body).

    `body_parts` go out one by one with `delay` seconds between them (a slow client); sending stops as
    soon as the server has answered or closed. The whole exchange is bounded by `timeout`.
    """
    import select

    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        received = b""
        parts = iter(body_parts)
        sending = True
        while time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], delay if sending else 0.2)
            if readable:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
                if _response_complete(received):
                    break
                continue
            if sending:
                part = next(parts, None)
                if part is None:
                    sending = False
                    continue
                try:
                    sock.sendall(part)
                except OSError:  # the server answered and closed while we were still sending
                    sending = False
        else:
            raise TimeoutError(f"no complete response in {timeout} s (got {received[:200]!r})")
    return _parse_response(received)


def _response_complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def _parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise AssertionError(f"not an HTTP response: {data[:200]!r}")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


# --- checks -----------------------------------------------------------------------------


def check_problem(status: int, content_type: str, body: bytes, allowed: Iterable[int] | None = None) -> dict:
    """A documented error with an RFC 9457 body whose status matches the response's."""
    allowed = set(allowed) if allowed is not None else set(DOCUMENTED_ERRORS)
    assert status in allowed, f"status {status} not in {sorted(allowed)}: {body[:300]!r}"
    assert content_type.split(";")[0].strip() == "application/problem+json", (content_type, body[:300])
    problem = json.loads(body)
    for key in PROBLEM_KEYS:
        assert key in problem, f"problem+json without {key!r}: {problem}"
    assert problem["status"] == status, problem
    assert isinstance(problem["detail"], str) and problem["detail"], problem
    return problem


def check_error(response: httpx.Response, allowed: Iterable[int] | None = None) -> dict:
    return check_problem(response.status_code, response.headers.get("content-type", ""), response.content, allowed)


def check_image(response: httpx.Response, size: tuple[int, int] | None = None,
                fmt: str = "png") -> Image.Image:
    """200, the announced media type, a decodable image of the announced size (and `size` = (w, h) if given)."""
    assert response.status_code == 200, f"{response.status_code}: {response.content[:300]!r}"
    assert response.headers["content-type"] == f"image/{fmt}", response.headers["content-type"]
    img = Image.open(io.BytesIO(response.content))
    img.load()
    announced = tuple(int(v) for v in response.headers["x-output-size"].split("x"))
    assert img.size == announced, (img.size, announced)
    if size is not None:
        assert img.size == size, (img.size, size)
    return img


def check_any(response: httpx.Response) -> None:
    """Either a correct image or a documented problem: never a 5xx other than 503/504, never a bare error."""
    if response.status_code == 200:
        check_image(response, fmt=response.headers["content-type"].removeprefix("image/"))
    else:
        check_error(response)


# --- image builders -----------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + payload) if crc is None else crc
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def hand_png(width: int, height: int, bit_depth: int = 8, color_type: int = 2, rows: bytes | None = None,
             extra: bytes = b"") -> bytes:
    """A PNG built byte by byte: IHDR as given (even if absurd), then `extra` chunks, IDAT, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if rows is None:
        rows = b"\x00" * 16
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", zlib.compress(rows)) + \
        png_chunk(b"IEND", b"")


def png16(array: np.ndarray) -> bytes:
    """(H,W[,C]) uint16 -> a 16-bit PNG (gray, gray+alpha, RGB or RGBA), which Pillow cannot all write."""
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))
    return hand_png(width, height, 16, color_type, raw)


def png_chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """-> [(offset, kind, payload)] of a PNG's chunks."""
    out, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        out.append((pos, kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    """The same PNG with IHDR claiming another size (CRC fixed, so only the size lies)."""
    offset, kind, payload = png_chunks(data)[0]
    assert kind == b"IHDR"
    ihdr = struct.pack(">II", width, height) + payload[8:]
    return data[:offset] + png_chunk(b"IHDR", ihdr) + data[offset + 12 + len(payload) :]


def animated(fmt: str, frames: list[np.ndarray]) -> bytes:
    images = [Image.fromarray(f) for f in frames]
    options: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": 100, "loop": 0}
    if fmt == "WEBP":
        options["lossless"] = True
    return encode(images[0], fmt, **options)


def jpeg_with_exif_orientation(array: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())


def cmyk_jpeg(height: int = 16, width: int = 16) -> bytes:
    return encode(Image.fromarray(noise(height, width, 4, seed=3), mode="CMYK"), "JPEG", quality=90)


def ycck_jpeg(height: int = 16, width: int = 16) -> bytes:
    """A 4-component JPEG whose Adobe APP14 marker says YCCK (transform 2): Pillow writes only CMYK
    (transform 0), so patch the flag; decoders then read the same samples as YCCK."""
    data = bytearray(cmyk_jpeg(height, width))
    at = data.find(b"Adobe")
    assert at > 0, "Pillow's CMYK JPEG has no Adobe marker"
    data[at + 11] = 2  # 'Adobe' + version(2) + flags0(2) + flags1(2) -> transform
    return bytes(data)


def multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "reliabilityBoundary7") \
        -> tuple[bytes, str]:
    """[(field name, filename or None, content type or None, payload)] -> (body, Content-Type header)."""
    body = b""
    for name, filename, content_type, payload in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type:
            body += f"Content-Type: {content_type}\r\n".encode()
        body += b"\r\n" + payload + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def pixels(response_or_bytes: httpx.Response | bytes) -> np.ndarray:
    data = response_or_bytes.content if isinstance(response_or_bytes, httpx.Response) else response_or_bytes
    return np.asarray(Image.open(io.BytesIO(data)))


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
