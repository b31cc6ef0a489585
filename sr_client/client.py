"""Python client for the IMDN super-resolution service (``POST /v1/superresolve``).

``SRClient`` (sync) and ``AsyncSRClient`` (asyncio) send one image and return a
``Result``: the encoded bytes plus what the service said about them (model,
scale, sizes, request id, Server-Timing). Errors come back as ``SRError``,
built from the service's RFC 9457 problem+json body. 429 and 503 are retried,
waiting as long as ``Retry-After`` asks, within a ``RetryPolicy``.

``upscale_folder`` upscales many files with a bounded number of requests in
flight and writes ``<stem>_x<scale>.<format>`` files.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import mimetypes
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from model.plan import (
    CONTENT_KINDS,
    DEFAULT_MODEL,
    DEFAULT_SCALE,
    FIT_MODES,
    FRAME_CHOICES,
    MODEL_CHOICES,
    is_model_choice,
)

log = logging.getLogger("sr_client")

DEFAULT_URL = "http://127.0.0.1:8000"
ENDPOINT = "/v1/superresolve"
MODELS = MODEL_CHOICES
FORMATS = ("png", "webp", "jpeg", "avif", "gif")
METADATA = ("keep", "nogps", "strip")  # EXIF/XMP/IPTC in the output; the ICC profile always goes
RETRY_STATUSES = frozenset({429, 503})
# What the service can decode; anything else in a folder is skipped, not sent.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif",
                            ".avif"})
# The service may take minutes on a CPU before its first byte (PNG streams after the first band).
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)

ImageInput = bytes | bytearray | memoryview | str | os.PathLike[str]


class SRError(Exception):
    """The service refused or failed a request; fields come from its problem+json body."""

    def __init__(self, status: int, title: str, detail: str, *, type: str = "", request_id: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail and detail != title else f"{status} {title}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.request_id = request_id
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in RETRY_STATUSES


@dataclass(frozen=True)
class Result:
    """An upscaled image and the service's account of it."""

    content: bytes
    media_type: str
    model: str
    scale: str
    input_size: tuple[int, int] | None  # (width, height)
    output_size: tuple[int, int] | None  # (width, height)
    request_id: str
    timings_ms: dict[str, float]  # Server-Timing: decode, queue, inference, encode
    headers: Mapping[str, str] = field(repr=False)
    attempts: int = 1

    @property
    def format(self) -> str:
        return self.media_type.removeprefix("image/")

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_bytes(self.content)
        return path

    def __repr__(self) -> str:
        """What came back, in one line: sizes, model and timings, never the image's bytes."""
        def size(wh: tuple[int, int] | None) -> str:
            return f"{wh[0]}x{wh[1]}" if wh else "?"

        timings = ", ".join(f"{name} {ms:.0f} ms" for name, ms in self.timings_ms.items())
        return (f"Result({self.format} {size(self.input_size)} -> {size(self.output_size)}, model {self.model}, "
                f"{len(self.content):,} bytes, {timings or 'no timings'}, attempts {self.attempts}, "
                f"request {self.request_id or '?'})")


@dataclass(frozen=True)
class RetryEvent:
    """Passed to ``on_retry`` before the client sleeps and tries again."""

    attempt: int  # the attempt that failed, from 1
    error: SRError
    delay: float  # seconds the client will now sleep


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry 429 (queue full) and 503 (starting or draining).

    The wait is ``Retry-After`` when the service sends it, else exponential
    backoff, capped at ``max_wait``; then up to ``jitter`` seconds are added at
    random so that clients refused together do not all come back together.
    """

    attempts: int = 5  # in all, the first included; 1 disables retries
    backoff: float = 0.5  # first wait without Retry-After; doubles each time
    max_wait: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, retry_after: float | None) -> float:
        base = retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1)
        return min(max(0.0, base), self.max_wait) + random.uniform(0, self.jitter)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (it may be delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def parse_server_timing(value: str | None) -> dict[str, float]:
    """'decode;dur=6.5, queue;dur=0.1' -> {'decode': 6.5, 'queue': 0.1} (milliseconds)."""
    timings: dict[str, float] = {}
    for metric in (value or "").split(","):
        name, *params = (part.strip() for part in metric.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if name and key.strip().lower() == "dur":
                with contextlib.suppress(ValueError):  # a malformed metric is dropped, not fatal
                    timings[name] = float(number.strip('" '))
    return timings


def _parse_size(value: str | None) -> tuple[int, int] | None:
    width, _, height = (value or "").partition("x")
    return (int(width), int(height)) if width.isdigit() and height.isdigit() else None


def _result(response: httpx.Response, attempts: int) -> Result:
    h = response.headers
    return Result(
        content=response.content,
        media_type=h.get("content-type", "application/octet-stream").split(";")[0].strip(),
        model=h.get("x-model", ""),
        scale=h.get("x-scale", ""),
        input_size=_parse_size(h.get("x-input-size")),
        output_size=_parse_size(h.get("x-output-size")),
        request_id=h.get("x-request-id", ""),
        timings_ms=parse_server_timing(h.get("server-timing")),
        headers=h,
        attempts=attempts,
    )


def _error(response: httpx.Response) -> SRError:
    """problem+json -> SRError; a body that is not (a proxy's HTML page, say) still gives a useful message."""
    title, detail, kind = response.reason_phrase or "HTTP error", "", ""
    request_id = response.headers.get("x-request-id", "")
    try:
        body = response.json()
    except ValueError:
        detail = response.text.strip()[:500]
    else:
        if isinstance(body, dict):
            title = str(body.get("title") or title)
            detail = str(body.get("detail") or "")
            kind = str(body.get("type") or "")
            request_id = str(body.get("request_id") or request_id)
    return SRError(response.status_code, title, detail, type=kind, request_id=request_id,
                   retry_after=parse_retry_after(response.headers.get("retry-after")))


def read_image(source: ImageInput) -> tuple[bytes, str]:
    """bytes or a path -> (bytes, Content-Type). The service sniffs the format itself; the type is a courtesy."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "application/octet-stream"
    path = Path(source)
    guessed, _ = mimetypes.guess_type(path.name)
    # Only image/* and octet-stream bodies are accepted: never forward a guess like text/plain.
    return path.read_bytes(), guessed if guessed and guessed.startswith("image/") else "application/octet-stream"


def upscale_params(scale: float | None = None, width: int | None = None, height: int | None = None,
                   model: str = DEFAULT_MODEL, format: str = "png", quality: int | None = None,
                   content: str | None = None, fit: str | None = None, frames: str | None = None,
                   metadata: str | None = None) -> dict[str, str]:
    """The query string; only cheap sanity checks here, the service validates the rest and says why.
    content, fit, frames, metadata None: the service's own defaults (IMDN_CONTENT, fill, all, IMDN_METADATA)."""
    format = "jpeg" if format == "jpg" else format
    if not is_model_choice(model):
        raise ValueError(f"model must be one of {', '.join(MODELS)} or as:CAMERA, got {model!r}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    params = {"model": model, "format": format}
    for name, choice, choices in (("content", content, CONTENT_KINDS), ("fit", fit, FIT_MODES),
                                  ("frames", frames, FRAME_CHOICES), ("metadata", metadata, METADATA)):
        if choice is not None and choice not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {choice!r}")
        if choice is not None:
            params[name] = choice
    for name, value in (("scale", scale), ("width", width), ("height", height), ("quality", quality)):
        if value is not None:
            params[name] = f"{value:g}" if isinstance(value, float) else str(value)
    return params


class _ClientBase:
    def __init__(self, url: str, api_key: str | None, retry: RetryPolicy | None,
                 on_retry: Callable[[RetryEvent], None] | None) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.headers = {"Accept": "image/*, application/problem+json"}
        if api_key:
            self.headers["X-API-Key"] = api_key

    def _next_delay(self, error: SRError, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to give up and raise."""
        if not error.retryable or attempt >= self.retry.attempts:
            return None
        delay = self.retry.delay(attempt, error.retry_after)
        log.info("%s (attempt %d of %d); retrying in %.1f s", error, attempt, self.retry.attempts, delay)
        if self.on_retry:
            self.on_retry(RetryEvent(attempt, error, delay))
        return delay


class SRClient(_ClientBase):
    """Blocking client. Use as a context manager, or call ``close()``."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
                 on_retry: Callable[[RetryEvent], None] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, api_key, retry, on_retry)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    def upscale(self, image: ImageInput, scale: float | None = None, width: int | None = None,
                height: int | None = None, model: str = DEFAULT_MODEL, format: str = "png",
                quality: int | None = None, content: str | None = None, fit: str | None = None,
                frames: str | None = None, *, metadata: str | None = None) -> Result:
        """Upscale bytes or a file. Give scale, or width and/or height (one keeps the aspect ratio);
        neither means the service default (x2); scale 1 runs IMDN_AS on a photo at its own size.
        content: 'photo' or 'clean' (None: the service's default). fit, with width and height: 'fill',
        'contain' or 'cover'. frames: 'all' (an animation comes back animated) or 'first'. metadata: 'keep',
        'nogps' or 'strip' (None: the service's default). Raises SRError, or httpx.HTTPError when unreachable."""
        params = upscale_params(scale, width, height, model, format, quality, content, fit, frames, metadata)
        data, content_type = read_image(image)
        attempt = 0
        while True:
            attempt += 1
            response = self._http.post(ENDPOINT, params=params, content=data,
                                       headers={"Content-Type": content_type})
            if response.is_success:
                return _result(response, attempt)
            error = _error(response)
            delay = self._next_delay(error, attempt)
            if delay is None:
                raise error
            time.sleep(delay)

    def models(self) -> dict[str, Any]:
        """GET /v1/models: loaded models, devices and limits."""
        response = self._http.get("/v1/models")
        if not response.is_success:
            raise _error(response)
        return dict(response.json())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSRClient(_ClientBase):
    """asyncio client; one instance can carry many concurrent requests. ``async with`` it, or ``aclose()``."""

    def __init__(self, url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None,
                 on_retry: Callable[[RetryEvent], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, max_connections: int = 100) -> None:
        super().__init__(url, api_key, retry, on_retry)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport,
                                       limits=httpx.Limits(max_connections=max_connections))

    async def upscale(self, image: ImageInput, scale: float | None = None, width: int | None = None,
                      height: int | None = None, model: str = DEFAULT_MODEL, format: str = "png",
                      quality: int | None = None, content: str | None = None, fit: str | None = None,
                      frames: str | None = None, *, metadata: str | None = None) -> Result:
        """As ``SRClient.upscale``."""
        params = upscale_params(scale, width, height, model, format, quality, content, fit, frames, metadata)
        data, content_type = await asyncio.to_thread(read_image, image)
        attempt = 0
        while True:
            attempt += 1
            response = await self._http.post(ENDPOINT, params=params, content=data,
                                             headers={"Content-Type": content_type})
            if response.is_success:
                return _result(response, attempt)
            error = _error(response)
            delay = self._next_delay(error, attempt)
            if delay is None:
                raise error
            await asyncio.sleep(delay)

    async def models(self) -> dict[str, Any]:
        response = await self._http.get("/v1/models")
        if not response.is_success:
            raise _error(response)
        return dict(response.json())

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSRClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --- folders -------------------------------------------------------------------------


@dataclass
class FolderSummary:
    """What ``upscale_folder`` did with each input."""

    written: list[Path] = field(default_factory=list)  # output files
    skipped: dict[Path, str] = field(default_factory=dict)  # not sent -> why (not an image, a folder, an output)
    existing: list[Path] = field(default_factory=list)  # outputs already there, left alone (overwrite=False)
    failed: dict[Path, str] = field(default_factory=dict)  # input -> why
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        parts = [f"{len(self.written)} written"]
        if self.existing:
            parts.append(f"{len(self.existing)} already there")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        parts.append(f"{len(self.failed)} failed")
        return ", ".join(parts) + f" in {self.seconds:.1f} s"


def output_suffix(scale: float | None, width: int | None, height: int | None) -> str:
    """'_x2', '_x3.3', '_640x480', '_w640' or '_h480': known before the request, so reruns can skip."""
    if scale is not None:
        return f"_x{scale:g}"
    if width is not None and height is not None:
        return f"_{width}x{height}"
    if width is not None:
        return f"_w{width}"
    if height is not None:
        return f"_h{height}"
    return "_x2"  # the service's default


def collect_images(paths: Iterable[str | os.PathLike[str]],
                   recursive: bool = False) -> tuple[list[Path], dict[Path, str]]:
    """Files and folders -> (image files in a stable order, {skipped path: why})."""
    images: list[Path] = []
    skipped: dict[Path, str] = {}
    for entry in map(Path, paths):
        found = [entry] if not entry.is_dir() else sorted(entry.rglob("*") if recursive else entry.iterdir())
        for file in found:
            if file.is_dir():
                if not recursive:
                    skipped[file] = "a folder (-r descends into sub-folders)"
            elif file.name.startswith(".") and file != entry:
                skipped[file] = "a hidden file"
            elif file.suffix.lower() not in IMAGE_SUFFIXES:
                skipped[file] = f"not an image file name (sends {', '.join(sorted(IMAGE_SUFFIXES))})"
            else:
                images.append(file)
    return list(dict.fromkeys(images)), skipped


def _write_atomically(path: Path, content: bytes) -> None:
    # A crash or Ctrl-C mid-write must not leave a truncated image that a rerun would then skip.
    partial = path.with_name(f".{path.name}.part")
    partial.write_bytes(content)
    os.replace(partial, path)


async def aupscale_folder(paths: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None = None, *,
                          url: str = DEFAULT_URL, concurrency: int = 4, scale: float | None = None,
                          width: int | None = None, height: int | None = None, model: str = DEFAULT_MODEL,
                          format: str = "png", quality: int | None = None, content: str | None = None,
                          fit: str | None = None, frames: str | None = None, api_key: str | None = None,
                          metadata: str | None = None,
                          overwrite: bool = True, recursive: bool = False, progress: bool = True,
                          retry: RetryPolicy | None = None, client: AsyncSRClient | None = None) -> FolderSummary:
    """Upscale every image among `paths` (files or folders) with at most `concurrency` requests in flight.

    Writes ``<stem><suffix>.<format>`` (see ``output_suffix``) into `out_dir`, or next to each input when
    it is None. One file failing does not stop the others: see ``FolderSummary.failed``.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    format = "jpeg" if format == "jpg" else format
    # fails before any request is sent
    upscale_params(scale, width, height, model, format, quality, content, fit, frames, metadata)
    if scale is None and width is None and height is None:
        scale = DEFAULT_SCALE
    started = time.perf_counter()
    images, skipped = collect_images(paths, recursive)
    summary = FolderSummary(skipped=skipped)
    target_dir = Path(out_dir) if out_dir is not None else None
    if target_dir is not None:
        target_dir.mkdir(parents=True, exist_ok=True)

    suffix = output_suffix(scale, width, height)
    jobs: dict[Path, Path] = {}  # output -> input
    for image in images:
        output = (target_dir or image.parent) / f"{image.stem}{suffix}.{format}"
        if output in jobs:
            summary.failed[image] = f"its output {output} is also the output of {jobs[output]}"
        else:
            jobs[output] = image
    # A rerun over the same folder must not upscale the previous run's outputs again.
    outputs = {p.resolve() for p in jobs}
    jobs = {out: src for out, src in jobs.items() if src.resolve() not in outputs}
    summary.skipped.update({p: "an output of this run" for p in images if p.resolve() in outputs})

    owns_client = client is None
    client = client or AsyncSRClient(url, api_key=api_key, retry=retry, max_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(jobs), unit="img", desc="upscaling", disable=not progress)

    async def one(output: Path, source: Path) -> None:
        try:
            if not overwrite and output.exists():
                summary.existing.append(output)
                return
            async with gate:
                result = await client.upscale(source, scale, width, height, model, format, quality, content, fit,
                                              frames, metadata=metadata)
            await asyncio.to_thread(_write_atomically, output, result.content)
            summary.written.append(output)
        except (SRError, httpx.HTTPError, OSError) as exc:
            summary.failed[source] = str(exc) or type(exc).__name__
            log.warning("%s: %s", source, summary.failed[source])
        finally:
            bar.update(1)
            if summary.failed:
                bar.set_postfix(failed=len(summary.failed))

    try:
        await asyncio.gather(*(one(out, src) for out, src in jobs.items()))
    finally:
        bar.close()
        if owns_client:
            await client.aclose()
    summary.written.sort()
    summary.seconds = time.perf_counter() - started
    return summary


def upscale_folder(paths: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str] | None = None,
                   **options: Any) -> FolderSummary:
    """Blocking wrapper of ``aupscale_folder`` (same arguments); from async code await that instead."""
    return asyncio.run(aupscale_folder(paths, out_dir, **options))
