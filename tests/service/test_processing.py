"""A request's plumbing on its own (service/processing.py): the thread hand-offs, the request's runner,
the wait for a hung-up client or a drain deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from service.errors import RequestCancelledError, RequestTimeoutError
from service.processing import DrainDeadlineError, RequestRunner, Timings, prefetched, run_in_thread, unless_drain_ends


def failing(after: int) -> Iterator[int]:
    yield from range(after)
    raise ValueError("the producer failed")


def endless(produced: list[int]) -> Iterator[int]:
    while True:
        produced.append(len(produced))
        yield produced[-1]


def items_of(prefetching: Iterator[int | None]) -> Iterator[int]:
    """The items, without the None that stands for 'not ready yet'."""
    return (item for item in prefetching if item is not None)


def test_prefetched_keeps_order_and_reraises() -> None:
    cancel = threading.Event()
    assert list(items_of(prefetched(iter(range(5)), cancel))) == [0, 1, 2, 3, 4]
    got = []
    with pytest.raises(ValueError, match="producer failed"):
        for item in items_of(prefetched(failing(2), cancel)):
            got.append(item)
    assert got == [0, 1]


def test_prefetched_says_when_the_next_item_is_not_ready() -> None:
    """While an item takes longer than a poll, None comes instead (a PNG stream sends its keep-alive then)."""

    def slow() -> Iterator[int]:
        time.sleep(0.8)
        yield 7

    got = list(prefetched(slow(), threading.Event()))
    assert got[-1] == 7 and set(got[:-1]) == {None} and 1 <= len(got) - 1 <= 4  # one None per 0.25 s poll


def test_prefetched_runs_one_step_ahead_and_stops_when_cancelled() -> None:
    cancel = threading.Event()
    produced: list[int] = []
    items = items_of(prefetched(endless(produced), cancel))
    assert next(items) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert 2 <= len(produced) <= 3  # one handed over and taken, one waiting, at most one more being made
    cancel.set()
    assert list(items) in ([], [1], [1, 2])  # what was already handed over or being handed over, then the end
    time.sleep(0.6)  # the producer gives up its hand-off within one poll
    assert len(produced) <= 3


@pytest.mark.anyio
async def test_run_in_thread_streams_in_order_and_reraises() -> None:
    cancel = threading.Event()
    assert [chunk async for chunk in run_in_thread(iter([b"a", b"b", b"c"]), cancel)] == [b"a", b"b", b"c"]

    def broken() -> Iterator[bytes]:
        yield b"a"
        raise ValueError("the encoder failed")

    got = []
    with pytest.raises(ValueError, match="encoder failed"):
        async for chunk in run_in_thread(broken(), threading.Event()):
            got.append(chunk)
    assert got == [b"a"]


@pytest.mark.anyio
async def test_run_in_thread_closed_early_cancels_its_thread() -> None:
    cancel = threading.Event()
    chunks = run_in_thread((bytes([i % 256]) for i in range(10**6)), cancel)
    assert await chunks.__anext__() == b"\x00"
    await chunks.aclose()
    assert cancel.is_set()
    started = time.monotonic()
    while any(t.name == "upscale-request" and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() - started < 5, "the request thread did not stop"
        await asyncio.sleep(0.05)


@pytest.mark.anyio
async def test_unless_drain_ends() -> None:
    async def answer(after: float) -> str:
        await asyncio.sleep(after)
        return "done"

    not_draining = SimpleNamespace(drain_expired=None)
    assert await unless_drain_ends(not_draining, answer(0)) == "done"  # type: ignore[arg-type]
    expired = asyncio.Event()
    draining = SimpleNamespace(drain_expired=expired)
    assert await unless_drain_ends(draining, answer(0)) == "done"  # type: ignore[arg-type]
    asyncio.get_running_loop().call_later(0.05, expired.set)
    with pytest.raises(DrainDeadlineError) as caught:
        await unless_drain_ends(draining, answer(10))  # type: ignore[arg-type]
    assert caught.value.headers == {"Retry-After": "1", "Connection": "close"}


def test_request_runner_refuses_once_cancelled_or_late() -> None:
    def pool(name: str, batch: torch.Tensor, contrast: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        return batch

    cancel = threading.Event()
    runner = RequestRunner(pool, cancel, time.monotonic() + 60)  # type: ignore[arg-type]
    batch = torch.zeros(1, 3, 4, 4)
    assert runner("x2", batch) is batch
    cancel.set()
    with pytest.raises(RequestCancelledError):
        runner("x2", batch)
    late = RequestRunner(pool, threading.Event(), time.monotonic() - 1)  # type: ignore[arg-type]
    with pytest.raises(RequestTimeoutError):
        late("x2", batch)


def test_server_timing_header() -> None:
    timings = Timings(decode=0.0012, queue=0, inference=1.5, encode=0.25)
    assert timings.server_timing() == "decode;dur=1.2, queue;dur=0.0, inference;dur=1500.0, encode;dur=250.0"


def test_an_animation_stops_between_frames_once_cancelled() -> None:
    """animation_chunks upscales frame by frame and checks the cancel flag between frames: a request cancelled
    during its first frame runs no network for the others (each frame here is one x2 call)."""
    import io

    import numpy as np
    from PIL import Image

    from model.animation import open_animation
    from model.backends import TorchRunner
    from model.engine import Upscaler
    from model.imdn import build_model
    from service.processing import animation_chunks

    torch.manual_seed(0)
    calls: list[str] = []
    cancel = threading.Event()
    torch_runner = TorchRunner({"x2": build_model("x2")})

    class CancelledDuringTheFirstFrame:
        def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
            calls.append(name)
            cancel.set()  # the client leaves while the first frame computes
            return torch_runner(name, batch, cca_contrast)

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    animation = open_animation(buffer.getvalue())
    assert animation is not None and animation.frames == 5
    upscaler = Upscaler(CancelledDuringTheFirstFrame(), available=["x2"], content="clean")  # type: ignore[arg-type]
    plan = upscaler.plan(animation.size, 2)
    with pytest.raises(RequestCancelledError):
        next(animation_chunks(upscaler, animation, plan, "png", 90, 1, Timings(), cancel, lambda: None))
    assert calls == ["x2"]
    # Not cancelled: every frame runs, one call each, and one animation comes out.
    calls.clear()
    cancel = threading.Event()

    def counted(name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(name)
        return torch_runner(name, batch, cca_contrast)

    untouched = Upscaler(counted, available=["x2"], content="clean")  # type: ignore[arg-type]
    data = b"".join(animation_chunks(untouched, animation, plan, "png", 90, 1, Timings(), cancel, lambda: None))
    assert calls == ["x2"] * 5 and Image.open(io.BytesIO(data)).n_frames == 5
