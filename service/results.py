"""Results as cacheable things: the ETag of a request's result, If-None-Match, and an in-process LRU of encoded
results (IMDN_RESULT_CACHE_MB). Both are decided before admission: a 304 or a hit takes no processing slot."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

from model.links import result_etag
from model.plan import DEFAULT_SCALE
from service.metrics import Metrics
from service.params import UpscaleParams
from service.state import ServiceState

# What a result's headers say about it, kept with a cached body (the rest belong to the request).
KEPT_HEADERS = ("X-Model", "X-Scale", "X-Input-Size", "X-Output-Size", "X-Frames", "X-Frames-Dropped",
                "X-Alpha-Flattened", "X-Metadata", "X-Metadata-Dropped", "Content-Disposition")
PER_ENTRY = 4  # an entry may take at most a quarter of the cache: one huge result never empties it


@dataclass
class CachedResult:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


class ResultCache:
    """Encoded results by ETag, least recently used dropped first, bounded in bytes."""

    def __init__(self, capacity_bytes: int, metrics: Metrics) -> None:
        self.capacity = capacity_bytes
        self.entry_limit = capacity_bytes // PER_ENTRY
        self.metrics = metrics
        self.entries: OrderedDict[str, CachedResult] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()  # event-loop code only today; cheap insurance against a thread caller

    def get(self, tag: str) -> CachedResult | None:
        with self.lock:
            entry = self.entries.get(tag)
            if entry is not None:
                self.entries.move_to_end(tag)
        self.metrics.result_cache.labels("hit" if entry is not None else "miss").inc()
        return entry

    def put(self, tag: str, entry: CachedResult) -> None:
        if len(entry.body) > self.entry_limit:
            return
        with self.lock:
            old = self.entries.pop(tag, None)
            self.size -= len(old.body) if old is not None else 0
            self.entries[tag] = entry
            self.size += len(entry.body)
            while self.size > self.capacity:
                _, dropped = self.entries.popitem(last=False)
                self.size -= len(dropped.body)
            self.metrics.result_cache_bytes.set(self.size)


class ResultRecorder:
    """Collects a response's chunks as they are sent; the whole body goes into the cache once it completes."""

    def __init__(self, cache: ResultCache, tag: str, media_type: str, headers: dict[str, str]) -> None:
        self.cache, self.tag, self.media_type = cache, tag, media_type
        self.headers = {name: headers[name] for name in KEPT_HEADERS if name in headers}
        self.chunks: list[bytes] | None = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        if self.chunks is None:
            return
        self.size += len(chunk)
        if self.size > self.cache.entry_limit:
            self.chunks = None  # too big to keep: stop holding its pieces
            return
        self.chunks.append(chunk)

    def complete(self) -> None:
        if self.chunks is not None:
            self.cache.put(self.tag, CachedResult(b"".join(self.chunks), self.media_type, self.headers))


def resolved_options(state: ServiceState, params: UpscaleParams) -> dict[str, object]:
    """What decides the result besides the source and the weights: the request's options with the service's
    defaults filled in, and the settings that shape the output (backend, tiling, statistics, PNG level)."""
    settings = state.settings
    options: dict[str, object] = params.model_dump(include=set(UpscaleParams.model_fields) - {"url"})
    if options["scale"] is None and not params.width and not params.height:
        options["scale"] = DEFAULT_SCALE
    options["content"] = params.content or settings.content
    options["metadata"] = params.metadata or settings.metadata
    options.update(any_scale=settings.any_scale, refine_stats=settings.refine_stats, tile_size=settings.tile_size,
                   budget=state.budget_bytes, backend=state.backend, png_level=settings.png_compress_level)
    return options


async def result_tag(state: ServiceState, data: bytes, params: UpscaleParams) -> str:
    """The result's strong ETag (model.links.result_etag); hashing a large source runs off the event loop."""
    source = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    return result_etag(source, resolved_options(state, params), {m.name: m.sha256 for m in state.models})


def cache_control(request: Request, max_age: int) -> str:
    """A GET names its result completely (a signed link): shared caches may keep it, though not past the link's
    `expires`. A POST carries a user's upload: nobody keeps it, though its ETag lets the client keep the result."""
    if request.method != "GET":
        return "no-store"
    expires = request.query_params.get("expires", "")
    if expires.isdigit():
        max_age = max(0, min(max_age, int(expires) - int(time.time())))
    return f"public, max-age={max_age}"


def none_match(header: str, tag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2): weak comparison, a list of tags or '*'."""
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or tag in tags


def early_answer(request: Request, state: ServiceState, tag: str) -> Response | None:
    """Before admission: 304 for a GET whose client holds this result; the result itself from the cache; or
    None (it must be computed). Neither takes a processing slot or runs a network."""
    headers = {"ETag": tag, "Cache-Control": cache_control(request, state.settings.cache_max_age)}
    if request.method == "GET" and none_match(request.headers.get("if-none-match", ""), tag):
        return Response(status_code=304, headers=headers)
    entry = state.results.get(tag) if state.results is not None else None
    if entry is None:
        return None
    request.state.log_extra = {**getattr(request.state, "log_extra", {}), "cache": "hit",
                               "model": entry.headers.get("X-Model", "")}
    return Response(entry.body, media_type=entry.media_type,
                    headers={**entry.headers, **headers, "X-Cache": "hit"})
