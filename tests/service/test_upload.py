"""Reading the upload (service/upload.py) from a bare ASGI request: bodies, forms, size and time limits."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from service.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaError
from service.upload import UploadLimits, UploadTimeoutError, read_image

LIMITS = UploadLimits(limit=1000, timeout=5.0)
BOUNDARY = "b0undary"


def request(chunks: list[bytes], content_type: str, length: int | None = None, delay: float = 0.0) -> Request:
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    pending = list(chunks)

    async def receive() -> dict[str, object]:
        await asyncio.sleep(delay)
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        out += f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"".encode()
        out += (f'; filename="{filename}"\r\nContent-Type: image/png' if filename else "").encode()
        out += b"\r\n\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.anyio
async def test_raw_body_in_pieces() -> None:
    assert await read_image(request([b"\x89PNG", b"rest"], "image/png"), LIMITS) == (b"\x89PNGrest", {})


@pytest.mark.anyio
async def test_multipart_image_and_fields() -> None:
    body = form(("image", "a.png", b"pixels"), ("scale", None, b"3"))
    got = await read_image(request([body], f"multipart/form-data; boundary={BOUNDARY}"), LIMITS)
    assert got == (b"pixels", {"scale": "3"})
    with pytest.raises(BadRequestError, match="no file field 'image'"):
        await read_image(request([form(("scale", None, b"3"))], f"multipart/form-data; boundary={BOUNDARY}"), LIMITS)


@pytest.mark.anyio
async def test_too_large_declared_or_sent() -> None:
    with pytest.raises(PayloadTooLargeError, match="1,001 bytes"):
        await read_image(request([], "image/png", length=1001), LIMITS)  # refused before reading
    with pytest.raises(PayloadTooLargeError, match="over the limit"):
        await read_image(request([b"x" * 600, b"x" * 600], "image/png"), LIMITS)


@pytest.mark.anyio
async def test_other_content_types_refused() -> None:
    with pytest.raises(UnsupportedMediaError, match="text/plain"):
        await read_image(request([b"hello"], "text/plain"), LIMITS)


@pytest.mark.anyio
async def test_too_slow_an_upload_times_out() -> None:
    with pytest.raises(UploadTimeoutError, match="did not arrive within"):
        await read_image(request([b"x", b"y"], "image/png", delay=0.3), UploadLimits(limit=1000, timeout=0.1))
