"""One upscale request from decoded picture to encoded bytes, run off the event loop, and its ending:
a client that hangs up, or a drain deadline that passes.

A request thread pulls bands from the engine and encodes them; chunks cross to
the event loop through a small bounded queue, so a slow client slows the work
instead of piling up memory. A client that goes away sets the cancel flag and
the thread stops before its next tile.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import StreamingResponse
from PIL import Image
from starlette.types import Receive, Scope, Send

from model.animation import Animation, decoded_frames, encode_animation
from model.encode import PNGStreamEncoder, encode_whole
from model.engine import Upscaler
from model.imageio import Picture
from model.metadata import Metadata
from model.plan import Plan
from service.errors import ClientDisconnectedError, NotReadyError, RequestCancelledError, RequestTimeoutError
from service.pool import ModelPool
from service.state import ServiceState

CHUNKS_AHEAD = 4
POLL_S = 0.25  # how long a waiting thread goes without looking at the cancel flag
# What a producing thread hands over: ("item", value) for each item, then ("end", None) or ("error", exc).
Message = tuple[str, object]
T = TypeVar("T")


class RequestRunner:
    """The pool as seen by one request: refuses further tiles once cancelled or past its deadline, and stops
    waiting for (and drops) those it queued once cancelled."""

    def __init__(self, pool: ModelPool, cancel: threading.Event, deadline: float) -> None:
        self.pool, self.cancel, self.deadline = pool, cancel, deadline

    def _check(self) -> None:
        if self.cancel.is_set():
            raise RequestCancelledError("client disconnected")
        if time.monotonic() > self.deadline:
            raise RequestTimeoutError("the request ran past its time limit")

    def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        self._check()
        return self.pool(name, batch, cca_contrast, abandon=self.cancel)

    def cca_moments(self, name: str, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        self._check()
        return self.pool.cca_moments(name, windows, mask, cca_contrast, abandon=self.cancel)

    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check()
        return self.pool.run_part(name, kind, block, *inputs, abandon=self.cancel)


@dataclass
class Timings:
    decode: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    encode: float = 0.0

    def server_timing(self) -> str:
        parts = [f"{name};dur={getattr(self, name) * 1000:.1f}" for name in ("decode", "queue", "inference", "encode")]
        return ", ".join(parts)


def produce_in_thread(items: Iterator[object], hand_over: Callable[[Message], None], cancel: threading.Event,
                      name: str) -> None:
    """Drive the blocking iterator `items` in a daemon thread of its own, handing over each item, then its end
    or the exception it raised. `hand_over` waits for room until `cancel` is set; the thread then stops."""

    def produce() -> None:
        try:
            for item in items:
                hand_over(("item", item))
                if cancel.is_set():
                    return
            hand_over(("end", None))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer, which decides what it means
            if cancel.is_set():  # nobody is waiting: drop it, and with its traceback the frames (and picture) it holds
                exc.__traceback__ = None
                return
            hand_over(("error", exc))

    threading.Thread(target=produce, name=name, daemon=True).start()


def opened(message: Message) -> tuple[bool, object]:
    """(ended, item) of a handed-over message; an exception from the producing thread is raised here."""
    kind, value = message
    if kind == "error":
        assert isinstance(value, BaseException)
        try:
            raise value
        finally:  # this frame is in the exception's traceback: holding it here would make a cycle
            del value, message
    return kind == "end", value


def prefetched(items: Iterator[T], cancel: threading.Event) -> Iterator[T | None]:
    """Run `items` one step ahead in its own thread: band i+1 computes while band i is encoded. While the
    next item is not ready, None comes every POLL_S, so the consumer can keep its client's connection alive."""
    handoff: queue.Queue[Message] = queue.Queue(maxsize=1)

    def hand_over(message: Message) -> None:
        while not cancel.is_set():
            try:
                handoff.put(message, timeout=POLL_S)
                return
            except queue.Full:
                continue

    produce_in_thread(items, hand_over, cancel, "upscale-bands")
    while True:
        try:
            message = handoff.get(timeout=POLL_S)
        except queue.Empty:
            if cancel.is_set():  # the producer stopped without a word: nobody wants the rest
                return
            yield None
            continue
        ended, item = opened(message)
        if ended:
            return
        yield cast(T, item)


def while_in_use(pool: ModelPool, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Count the request as one of the pool's active callers for as long as its chunks are being made."""
    with pool.in_use():
        yield from chunks


def encoded_chunks(upscaler: Upscaler, picture: Picture, plan: Plan, fmt: str, quality: int, png_level: int,
                   timings: Timings, cancel: threading.Event, heartbeat_s: float,
                   metadata: Metadata | None = None) -> Iterator[bytes]:
    """Picture -> encoded bytes in pieces; PNG streams band by band, WebP/JPEG/AVIF come whole; `metadata` is
    what model/metadata.py let through for this output.

    A PNG's first bytes (its header and a keep-alive) leave after at most `heartbeat_s` without a band, and
    then a keep-alive whenever `heartbeat_s` pass without one: a load balancer's idle timeout never sees a
    silent response, however long the statistics of IMDN_AS in parts take before the first band.
    timings.inference is the time spent waiting for bands (compute not hidden behind encoding).
    """
    bands = prefetched(upscaler.picture_bands(picture, plan), cancel)
    out_h, out_w = plan.out_size

    def waited() -> Iterator[np.ndarray | None]:
        """The bands (None every POLL_S while the next one computes), each wait counted as inference."""
        started = time.perf_counter()
        for band in bands:
            timings.inference += time.perf_counter() - started
            yield band
            started = time.perf_counter()
        timings.inference += time.perf_counter() - started

    if fmt == "png":
        encoder = PNGStreamEncoder(out_w, out_h, picture.channels, picture.bits, png_level, picture.icc_profile,
                                   metadata=metadata)
        pending = encoder.header()
        last_sent = time.monotonic()
        for band in waited():
            if band is None:
                if time.monotonic() - last_sent < heartbeat_s:
                    continue
                pending += encoder.keep_alive()
            else:
                started = time.perf_counter()
                pending += encoder.add(band)
                timings.encode += time.perf_counter() - started
            yield pending
            pending, last_sent = b"", time.monotonic()
        yield pending + encoder.finish()
        return
    parts = [band for band in waited() if band is not None]
    started = time.perf_counter()
    data = encode_whole(np.concatenate(parts), fmt, quality, picture.icc_profile, metadata)
    timings.encode += time.perf_counter() - started
    yield data


def animation_chunks(upscaler: Upscaler, animation: Animation, plan: Plan, fmt: str, quality: int, png_level: int,
                     timings: Timings, cancel: threading.Event, check: Callable[[], None]) -> Iterator[bytes]:
    """An animation -> its upscaled animation's bytes, in one piece (APNG, WebP and GIF writers need every frame).
    Frames are decoded, upscaled (tiled as a still would be) and converted one at a time; the request stops
    between frames once cancelled, and `check` (the request's end or deadline) runs before each frame's reads."""
    images: list[Image.Image] = []
    durations: list[int] = []
    decoded = decoded_frames(animation, check)
    while True:
        started = time.perf_counter()
        item = next(decoded, None)
        timings.decode += time.perf_counter() - started
        if item is None:
            break
        if cancel.is_set():
            raise RequestCancelledError("client disconnected")
        picture, duration = item
        started = time.perf_counter()
        images.append(Image.fromarray(upscaler.upscale_picture(picture, plan)))
        durations.append(duration)
        timings.inference += time.perf_counter() - started
    started = time.perf_counter()
    data = encode_animation(images, durations, animation.loop, fmt, quality, png_level, animation.icc_profile)
    timings.encode += time.perf_counter() - started
    yield data


async def run_in_thread(chunks: Iterator[bytes], cancel: threading.Event) -> AsyncGenerator[bytes, None]:
    """Drive a blocking chunk iterator in a thread; yield its chunks on the event loop, in order.

    Exceptions from the thread are re-raised here. If the consumer stops early
    (client gone), the cancel flag is set and the thread winds down.
    """
    loop = asyncio.get_running_loop()
    handoff: asyncio.Queue[Message] = asyncio.Queue(CHUNKS_AHEAD)

    def hand_over(message: Message) -> None:
        future = asyncio.run_coroutine_threadsafe(handoff.put(message), loop)
        while not cancel.is_set():
            try:
                future.result(timeout=POLL_S)
                return
            except TimeoutError:
                continue
        future.cancel()

    produce_in_thread(chunks, hand_over, cancel, "upscale-request")
    try:
        while True:
            ended, chunk = opened(await handoff.get())
            if ended:
                return
            assert isinstance(chunk, bytes)
            yield chunk
    finally:
        cancel.set()


async def watched(request: Request, work: Awaitable[T], cancel: threading.Event, when: str) -> T:
    """Await `work` (a thread's result, the first chunk) while watching for the client hanging up: then
    set `cancel`, so the thread stops at its next check, and answer 499."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientDisconnectedError(f"client disconnected {when}")
    except BaseException:
        cancel.set()  # a decode stops at its next read, a request thread before its next tile
        if not task.done():
            task.cancel()
            # Let the cancellation reach a generator: closing it while __anext__ is still running fails.
            with contextlib.suppress(asyncio.CancelledError, Exception):  # nobody wants the result now
                await task
        raise
    finally:  # this frame is in the traceback of what the task raised: holding the task would make a cycle
        del task


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body generator as soon as sending stops, cut or not. Starlette leaves a generator whose
    send failed (a client too slow, cut by the middleware) to the garbage collector, so its clean-up, the
    request's processing slot and in-flight count, ran at some later turn of the event loop."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


class DrainDeadlineError(NotReadyError):
    """The drain deadline passed before this request's response started."""


async def unless_drain_ends(state: ServiceState, work: Awaitable[T]) -> T:
    """Await `work`, unless the drain deadline passes first: then cancel it and raise DrainDeadlineError."""
    expired = state.drain_expired
    if expired is None:
        return await work
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(expired.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its own cleanup ran; no result needed
                await task
    try:
        if task.cancelled():
            raise DrainDeadlineError("the server is shutting down; retry (another instance will answer)",
                                     headers={"Retry-After": "1", "Connection": "close"})
        return task.result()
    finally:  # as in watched(): every stream ends with StopAsyncIteration raised from here
        del task, waiter
