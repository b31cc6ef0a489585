"""Reading the upload: raw image bodies or multipart forms, bounded in size and time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import BadRequestError, PayloadTooLargeError, ServiceError, UnsupportedMediaError


class UploadTimeoutError(ServiceError):
    status, kind, title = 408, "upload-timeout", "Upload too slow"


RAW_TYPES = ("image/", "application/octet-stream")


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, refusing more than `limit` bytes (early, from Content-Length, when it is sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the upload is {int(declared):,} bytes; the limit is {limit:,}")

    async def collect() -> bytes:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > limit:
                raise PayloadTooLargeError(f"the upload is over the limit of {limit:,} bytes")
        return bytes(data)

    try:
        return await asyncio.wait_for(collect(), timeout)
    except TimeoutError as exc:
        raise UploadTimeoutError(f"the upload did not arrive within {timeout:g} s") from exc


async def read_image(request: Request, limit: int, timeout: float) -> tuple[bytes, dict[str, str]]:
    """-> (image bytes, form fields). Accepts multipart field `image` or a raw image/* body."""
    content_type = request.headers.get("content-type", "").lower()
    body = await read_body(request, limit, timeout)
    if content_type.startswith("multipart/form-data"):
        return await _parse_multipart(request, body)
    if not content_type or content_type.startswith(RAW_TYPES):
        return body, {}
    raise UnsupportedMediaError(
        f"Content-Type {content_type!r} is not accepted: send the image as a multipart field 'image' "
        "or as the raw body with an image/* Content-Type"
    )


async def _parse_multipart(request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, replay(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart form: {exc.message}") from exc
    try:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            names = ", ".join(sorted(set(form.keys()))) or "none"
            raise BadRequestError(f"the form has no file field 'image' (fields: {names})")
        data = await image.read()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return data, fields
    finally:
        await form.close()
