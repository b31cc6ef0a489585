"""Reading the upload: raw image bodies or multipart forms, bounded in size and time, and in how many arrive at once."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.admission import client_of
from service.errors import (
    BadRequestError,
    ClientDisconnectedError,
    PayloadTooLargeError,
    QueueFullError,
    ServiceError,
    UnsupportedMediaError,
)
from service.params import single_values
from service.state import ServiceState


class UploadTimeoutError(ServiceError):
    status, kind, title = 408, "upload-timeout", "Upload too slow"


RAW_TYPES = ("image/", "application/octet-stream")
# An answer sent before the whole body arrived ends the connection: the rest of the body is unread.
CLOSE = {"Connection": "close"}


@dataclass
class UploadLimits:
    """How much may arrive (`limit` bytes), by when (`timeout` s in all), and how fast: after `grace_s`, at
    least `min_rate` bytes/s on average since the first byte was awaited (0: no minimum)."""

    limit: int
    timeout: float
    grace_s: float = 5.0
    min_rate: int = 0


async def read_body(request: Request, limits: UploadLimits) -> bytes:
    """The whole body, refusing more than `limit` bytes (early, from Content-Length, when it is sent),
    and a client that sends too slowly (408) or leaves (499: ClientDisconnectedError)."""
    limit = limits.limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the upload is {int(declared):,} bytes; the limit is {limit:,}",
                                   headers=CLOSE)
    loop = asyncio.get_running_loop()
    started = loop.time()
    data = bytearray()
    chunks = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        # The stream's end as a value, not as StopAsyncIteration through wait_for: that exception's traceback
        # and wait_for's future made a cycle holding this frame, and `data` (the whole upload), until the cycle
        # collector ran, after every request.
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return None

    while True:
        elapsed = loop.time() - started
        # The next bytes must come before the total deadline and before the average rate falls below
        # the minimum (a trickling or idle client is let go after the grace period, whatever it sent).
        wait = limits.timeout - elapsed
        too_slow = False
        if limits.min_rate:
            by_rate = max(limits.grace_s, (len(data) + 1) / limits.min_rate) - elapsed
            too_slow = by_rate < wait
            wait = min(wait, by_rate)
        try:
            chunk = await asyncio.wait_for(next_chunk(), max(wait, 0.0))
        except TimeoutError as exc:
            exc.__traceback__ = None  # the same cycle as above: this frame, and `data`, would wait for the collector
            if too_slow:
                raise UploadTimeoutError(
                    f"the upload is too slow: {len(data):,} bytes in {loop.time() - started:.1f} s; after the "
                    f"first {limits.grace_s:g} s it must average at least {limits.min_rate:,} bytes/s",
                    headers=CLOSE) from exc
            raise UploadTimeoutError(f"the upload did not arrive within {limits.timeout:g} s",
                                     headers=CLOSE) from exc
        except ClientDisconnect as exc:
            exc.__traceback__ = None
            raise ClientDisconnectedError(f"the client closed the connection during the upload, after "
                                          f"{len(data):,} bytes") from exc
        if chunk is None:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise PayloadTooLargeError(f"the upload is over the limit of {limit:,} bytes", headers=CLOSE)


async def read_image(request: Request, limits: UploadLimits) -> tuple[bytes, dict[str, str]]:
    """-> (image bytes, form fields). Accepts multipart field `image` or a raw image/* body."""
    content_type = request.headers.get("content-type", "").lower()
    body = await read_body(request, limits)
    if content_type.startswith("multipart/form-data"):
        return await _parse_multipart(request, body)
    if content_type.startswith("application/x-www-form-urlencoded"):  # url=... and options: a source by URL
        fields = single_values(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True), "form field")
        if "url" in fields:
            return b"", fields
    if not content_type or content_type.startswith(RAW_TYPES):
        return body, {}
    raise UnsupportedMediaError(
        f"Content-Type {content_type!r} is not accepted: send the image as a multipart field 'image' "
        "or as the raw body with an image/* Content-Type"
    )


class InMemoryMultiPartParser(MultiPartParser):
    """Starlette's parser with every file part kept in memory. The body is already here, within
    IMDN_MAX_UPLOAD_BYTES; Starlette spools parts over 1 MB to TMPDIR, where a full disk (a Kubernetes
    emptyDir of 1 GiB, 32 uploads of 32 MB at once) made a multipart upload fail with 500."""

    spool_max_size = sys.maxsize  # SpooledTemporaryFile rolls over to disk past this: never


async def _parse_multipart(request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await InMemoryMultiPartParser(request.headers, replay(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart form: {exc.message}") from exc
    try:
        image = form.get("image")
        if image is None and "url" in form:  # a source by URL, options beside it
            return b"", single_values(((k, v) for k, v in form.multi_items() if isinstance(v, str)), "form field")
        if not isinstance(image, UploadFile):
            names = ", ".join(sorted(set(form.keys()))) or "none"
            raise BadRequestError(f"the form has no file field 'image' (fields: {names})")
        data = await image.read()
        fields = single_values(((k, v) for k, v in form.multi_items() if isinstance(v, str)), "form field")
        return data, fields
    finally:
        await form.close()


@contextlib.contextmanager
def upload_place(request: Request, state: ServiceState) -> Iterator[None]:
    """One of IMDN_MAX_UPLOADS places, held while a source arrives (a body, or a fetch by URL), before
    admission: a slow client or origin holds this, never a processing slot or a queue place."""
    admission = state.admission
    assert admission is not None
    if state.uploads >= state.settings.max_uploads:
        state.metrics.rejected.labels("uploads_full").inc()
        raise QueueFullError(f"{state.uploads} uploads are already arriving; retry shortly",
                             headers={"Retry-After": "2"})
    admission.check(client_of(request, bool(state.settings.api_keys)))  # a full queue refuses before the body is sent
    state.uploads += 1
    state.metrics.uploads.set(state.uploads)
    try:
        yield
    finally:
        state.uploads -= 1
        state.metrics.uploads.set(state.uploads)


async def receive_upload(request: Request, state: ServiceState) -> tuple[bytes, dict[str, str]]:
    """The body (image bytes, form fields), read in an upload place."""
    settings = state.settings
    with upload_place(request, state):
        limits = UploadLimits(settings.max_upload_bytes, settings.request_timeout_s, settings.client_grace_s,
                              settings.min_client_rate)
        return await read_image(request, limits)
