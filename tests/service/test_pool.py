"""The batching pool on its own (no HTTP): tiles from different callers merge; a lone request never waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import torch

from service.pool import JobAbandonedError, ModelPool


class RecordingBackend:
    """Stands in for a replica: doubles its input and records each batch size it was given."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, name: str, batch: torch.Tensor, contrast: torch.Tensor | None = None) -> torch.Tensor:
        self.batch_sizes.append(batch.shape[0])
        return batch * 2

    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.batch_sizes.append(-1)
        return tuple(t + block for t in inputs)


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def pool(backend: RecordingBackend) -> Iterator[ModelPool]:
    pool = ModelPool([("fake#0", backend)], max_batch=3, max_wait_s=5.0)  # type: ignore[list-item]
    yield pool
    pool.close()


def call_together(pool: ModelPool, tiles: list[torch.Tensor], registered: bool) -> list[torch.Tensor]:
    """Each tile from its own thread (a caller each), started at once; the results in order."""
    results: list[torch.Tensor | None] = [None] * len(tiles)
    barrier = threading.Barrier(len(tiles))

    def caller(i: int) -> None:
        def run() -> None:
            barrier.wait()
            results[i] = pool("x2", tiles[i][None])[0]
        if registered:
            with pool.in_use():
                run()
        else:
            run()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(tiles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("registered", [False, True], ids=["unregistered", "registered"])
def test_tiles_of_several_callers_run_as_one_batch(pool: ModelPool, backend: RecordingBackend,
                                                  registered: bool) -> None:
    tiles = [torch.full((3, 8, 8), float(i)) for i in range(3)]
    results = call_together(pool, tiles, registered)
    for tile, result in zip(tiles, results, strict=True):
        assert torch.equal(result, tile * 2), "each caller gets its own slice back"
    assert sum(backend.batch_sizes) == 3
    assert backend.batch_sizes[-1] >= 2, f"nothing merged: {backend.batch_sizes}"


def test_network_parts_pass_through_whole_and_are_never_merged(backend: RecordingBackend) -> None:
    """Parts of a whole-image pass from several callers: each runs alone and returns its own tuple."""
    metrics: list[tuple[str, int]] = []
    pool = ModelPool([("fake#0", backend)], max_batch=3, max_wait_s=5.0,  # type: ignore[list-item]
                     on_batch=lambda model, tiles, seconds: metrics.append((model, tiles)))
    results: list[tuple[torch.Tensor, ...]] = []
    try:
        threads = [threading.Thread(target=lambda i=i: results.append(
            pool.run_part("as", "block", i, torch.zeros(1, 64, 2, 2), torch.ones(2)))) for i in range(3)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        pool.close()
    assert time.monotonic() - started < 4, "a part waited for company"
    assert backend.batch_sizes == [-1, -1, -1]
    assert sorted(float(r[1][0]) for r in results) == [1.0, 2.0, 3.0]
    assert metrics == [("as", 0)] * 3  # timed as network calls, counted as no tiles


def test_lone_registered_caller_does_not_wait(pool: ModelPool, backend: RecordingBackend) -> None:
    """max_wait is 5 s here: a lone request that waited for company would take that long."""
    started = time.monotonic()
    with pool.in_use():
        out = pool("x2", torch.ones(2, 3, 8, 8))
    assert torch.equal(out, torch.full((2, 3, 8, 8), 2.0))
    assert backend.batch_sizes == [2]
    assert time.monotonic() - started < 2.5


def test_in_use_counts_down_on_error(pool: ModelPool) -> None:
    with pytest.raises(RuntimeError), pool.in_use():
        raise RuntimeError("request failed")
    with pool.in_use():  # alone again: no wait
        started = time.monotonic()
        pool("x2", torch.ones(1, 3, 8, 8))
        assert time.monotonic() - started < 2.5


class ReleasingBackend(RecordingBackend):
    """Also counts release_memory calls, with the time of each."""

    def __init__(self) -> None:
        super().__init__()
        self.released: list[float] = []

    def release_memory(self) -> None:
        self.released.append(time.monotonic())


def test_an_idle_replica_releases_memory_once(monkeypatch):
    monkeypatch.setattr("service.pool.IDLE_RELEASE_S", 0.2)
    backend = ReleasingBackend()
    pool = ModelPool([("fake#0", backend)], max_batch=1)  # type: ignore[list-item]
    try:
        time.sleep(0.5)
        assert backend.released == []  # nothing run yet, nothing held
        # A steady stream (gaps well under the idle time) keeps the buffers.
        for _ in range(6):
            pool("x2", torch.ones(1, 3, 4, 4))
            time.sleep(0.05)
        assert backend.released == []
        finished = time.monotonic()
        time.sleep(1.0)
        assert len(backend.released) == 1  # released once after going idle, not again while idle
        assert backend.released[0] - finished >= 0.1
        pool("x2", torch.ones(1, 3, 4, 4))
        time.sleep(0.6)
        assert len(backend.released) == 2  # and again after the next burst
    finally:
        pool.close()


def test_an_abandoned_job_is_dropped_and_its_caller_freed() -> None:
    """A caller whose cancel flag is set stops waiting at once, and its job, still queued behind a running one,
    never runs: a request that ended holds neither its thread nor the replica (issue 30, item 2)."""
    release = threading.Event()
    ran: list[str] = []

    class SlowBackend(RecordingBackend):
        def __call__(self, name: str, batch: torch.Tensor, contrast: torch.Tensor | None = None) -> torch.Tensor:
            ran.append(name)
            if name == "busy":
                release.wait(10)
            return batch

    pool = ModelPool([("slow#0", SlowBackend())], max_batch=1, max_wait_s=0)  # type: ignore[list-item]
    try:
        busy = threading.Thread(target=pool, args=("busy", torch.zeros(1, 3, 4, 4)))
        busy.start()
        while not ran:
            time.sleep(0.01)
        abandon = threading.Event()
        abandon.set()
        started = time.monotonic()
        with pytest.raises(JobAbandonedError):
            pool("abandoned", torch.zeros(1, 3, 4, 4), abandon=abandon)
        assert time.monotonic() - started < 5  # not after the busy job
        release.set()
        busy.join(10)
        assert pool("after", torch.zeros(1, 3, 4, 4)).shape == (1, 3, 4, 4)
        assert ran == ["busy", "after"]
    finally:
        release.set()
        pool.close()
