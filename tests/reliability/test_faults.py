"""Faults inside the service: out-of-memory in a tile, a failing or dying model replica, a client that
goes away, SIGTERM under load, and bad model files at start-up.

Backends are wrapped, never patched globally: the engine is given a runner that raises
torch.OutOfMemoryError (or another exception) on cue, and the in-process app's pool replica gets
such a wrapper around its real backend, so the whole service path is exercised.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from model.backends import TorchRunner
from model.engine import Upscaler
from model.imdn import build_model
from tests.live_service import free_port, service_env
from tests.model.engine_support import CLEAN_AS
from tests.reliability.reliability_support import (
    InProcessApp,
    RealServer,
    check_error,
    check_image,
    encode,
    make_settings,
    noise,
    pixels,
)
from tests.samples import random_weights


class FaultyRunner:
    """A runner/backend wrapper that fails on cue.

    oom_above_tiles: torch.OutOfMemoryError for batches of more tiles than this;
    oom_above_pixels: ... for tiles with more pixels (h*w) than this;
    moments_oom_above_tiles: MemoryError (the CPU's kind) for statistics passes over more windows than this;
    fail: called before each network call; it may raise anything (RuntimeError, SystemExit, ...);
    delay: seconds to sleep in each call (a slow device).
    """

    def __init__(self, inner: object, oom_above_tiles: int | None = None, oom_above_pixels: int | None = None,
                 fail: Callable[[int], None] | None = None, delay: float = 0.0,
                 moments_oom_above_tiles: int | None = None) -> None:
        self.inner = inner
        self.oom_above_tiles, self.oom_above_pixels = oom_above_tiles, oom_above_pixels
        self.moments_oom_above_tiles = moments_oom_above_tiles
        self.moment_calls = 0
        self.fail, self.delay = fail, delay
        self.calls = self.ooms = 0
        self.entered = threading.Event()
        # TorchRunner/OnnxRunner attributes some callers read (device, dtype, models).
        for name in ("device", "dtype", "models"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def _enter(self) -> None:
        """Count a network call, then be slow or fail as asked."""
        self.calls += 1
        self.entered.set()
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            self.fail(self.calls)

    def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        self._enter()
        too_many = self.oom_above_tiles is not None and batch.shape[0] > self.oom_above_tiles
        too_big = self.oom_above_pixels is not None and batch.shape[2] * batch.shape[3] > self.oom_above_pixels
        if too_many or too_big:
            self.ooms += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: {tuple(batch.shape)})")
        return self.inner(name, batch, cca_contrast)  # type: ignore[operator]

    def cca_moments(self, name: str, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        self.moment_calls += 1
        limit = self.moments_oom_above_tiles
        if limit is not None and cca_contrast is not None and windows.shape[0] > limit:
            self.ooms += 1
            raise MemoryError(f"simulated: statistics of {tuple(windows.shape)}")
        return self.inner.cca_moments(name, windows, mask, cca_contrast)  # type: ignore[attr-defined]

    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._enter()
        return self.inner.run_part(name, kind, block, *inputs)  # type: ignore[attr-defined,no-any-return]

    def release_memory(self) -> None:
        self.inner.release_memory()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def torch_runner() -> TorchRunner:
    torch.manual_seed(0)
    return TorchRunner({name: build_model(name).eval() for name in ("x2", "as")})


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to one grey level (identical in our runs; 1 LSB leaves room for another BLAS)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
    assert diff.max() <= 1, f"max difference {diff.max()}, {np.count_nonzero(diff)} pixels differ"


# --- out of memory in a tile --------------------------------------------------------------------


@pytest.mark.parametrize("case,core,fault,image,scale", [
    ("batch", 32, {"oom_above_tiles": 1}, (160, 160), 2),        # a batch of tiles -> one tile at a time
    ("tile", 64, {"oom_above_pixels": 88 * 88}, (200, 200), 2),   # rows of 120 px windows -> 88 px windows
    ("whole", None, {"oom_above_pixels": 110 * 110}, (128, 128), 2),  # the whole image -> tiled, twice halved
    ("any-scale", 32, {"oom_above_tiles": 1}, (160, 160), 2.5),   # IMDN_AS path
])
def test_oom_retry_engine(torch_runner: TorchRunner, case: str, core: int | None, fault: dict, image: tuple,
                          scale: float) -> None:
    """A tile batch/row that runs out of memory is redone smaller; the output is the same as without."""
    array = noise(*image, seed=7)
    expected = Upscaler(torch_runner, max_batch=4, **CLEAN_AS, tile_size=core).upscale(array, scale=scale)
    faulty = FaultyRunner(torch_runner, **fault)
    got = Upscaler(faulty, max_batch=4, **CLEAN_AS, tile_size=core).upscale(array, scale=scale)
    assert faulty.ooms > 0, "the fault never fired: the test does not test anything"
    assert_same_image(np.asarray(got), np.asarray(expected))


def test_oom_in_the_statistics_pass(torch_runner: TorchRunner) -> None:
    """IMDN_AS refines its tiles' shared statistics in batches: a batch that runs out of memory is redone one
    window at a time (the same image), and if even one window does, the estimate serves (no error)."""
    array = noise(240, 240, seed=5)
    expected = Upscaler(torch_runner, max_batch=4, **CLEAN_AS, tile_size=128).upscale(array, scale=2.5)
    faulty = FaultyRunner(torch_runner, moments_oom_above_tiles=1)
    got = Upscaler(faulty, max_batch=4, **CLEAN_AS, tile_size=128).upscale(array, scale=2.5)
    assert faulty.ooms > 0, "the fault never fired"
    assert_same_image(np.asarray(got), np.asarray(expected))
    faulty = FaultyRunner(torch_runner, moments_oom_above_tiles=0)
    estimated = np.asarray(Upscaler(faulty, max_batch=4, **CLEAN_AS, tile_size=128).upscale(array, scale=2.5))
    assert faulty.ooms > 0 and estimated.shape == np.asarray(expected).shape
    assert np.abs(estimated.astype(np.int32) - np.asarray(expected).astype(np.int32)).mean() < 1


def test_oom_everywhere_is_an_error_not_a_hang(torch_runner: TorchRunner) -> None:
    """Out of memory even at the smallest tile: the error comes out (no endless halving)."""
    faulty = FaultyRunner(torch_runner, oom_above_pixels=1)
    with pytest.raises(torch.OutOfMemoryError):
        Upscaler(faulty, max_batch=4, **CLEAN_AS, tile_size=64).upscale(noise(96, 96), scale=2)
    assert faulty.ooms < 50


def test_oom_retry_through_the_pool(torch_runner: TorchRunner) -> None:
    """The same through the batching pool: the OOM crosses the replica's thread as the batch's exception."""
    from service.pool import ModelPool

    array = noise(96, 96, seed=8)
    expected = Upscaler(torch_runner, max_batch=4, **CLEAN_AS, tile_size=32).upscale(array, scale=2)
    faulty = FaultyRunner(torch_runner, oom_above_tiles=1)
    pool = ModelPool([("cpu#0", faulty)], max_batch=4, max_wait_s=0.002)  # type: ignore[list-item]
    try:
        got = Upscaler(pool, max_batch=4, **CLEAN_AS, tile_size=32).upscale(array, scale=2)
        assert faulty.ooms > 0
        assert pool.alive() and pool.replicas[0].failures == faulty.ooms
        assert_same_image(np.asarray(got), np.asarray(expected))
    finally:
        pool.close()


@pytest.fixture(scope="module")
def app(weights_dir: Path) -> Iterator[InProcessApp]:
    """Small tiles (windows of at most 32 + 2 x 28 px) so a 200x200 image is dozens of tiles, batched by 4."""
    app = InProcessApp(make_settings(weights_dir, tile_size=32, max_batch=4, models=["x2", "as"]))
    yield app
    app.close()


@pytest.fixture
def replica(app: InProcessApp) -> Iterator[object]:
    """The app's only replica; its original backend is put back after the test."""
    replica = app.state.pool.replicas[0]
    original = replica.backend
    yield replica
    replica.backend = original


def test_oom_retry_service_path(app: InProcessApp, replica: object) -> None:
    data = encode(noise(200, 200, seed=9))
    expected = app.upscale(data, "scale=2&content=clean")
    check_image(expected, (400, 400))
    faulty = FaultyRunner(replica.backend, oom_above_tiles=1)  # type: ignore[attr-defined]
    replica.backend = faulty  # type: ignore[attr-defined]
    got = app.upscale(data, "scale=2&content=clean")
    check_image(got, (400, 400))
    assert faulty.ooms > 0
    assert_same_image(pixels(got), pixels(expected))
    assert app.state.pool.alive()


def test_oom_unrecoverable_service_path(app: InProcessApp, replica: object) -> None:
    """OOM even one small tile at a time: 503 with Retry-After (not a 500), and the next request works."""
    faulty = FaultyRunner(replica.backend, oom_above_pixels=1)  # type: ignore[attr-defined]
    replica.backend = faulty  # type: ignore[attr-defined]
    response = app.upscale(encode(noise(96, 96)), "scale=2")
    check_error(response, {503})
    assert response.json()["type"].endswith("/out-of-memory") and response.headers["retry-after"] == "10"
    replica.backend = faulty.inner  # type: ignore[attr-defined]
    check_image(app.upscale(encode(noise(20, 20)), "scale=2"), (40, 40))
    assert app.state.admission.admitted == 0


# --- a failing or dying replica ------------------------------------------------------------------


def test_replica_exception_fails_only_that_request(app: InProcessApp, replica: object) -> None:
    """An ordinary exception in the backend: that request gets a 500 problem (a real server-side fault,
    logged), the replica's thread lives on and the next request succeeds."""
    failures_before = replica.failures  # type: ignore[attr-defined]

    def once(call: int) -> None:
        if call == 1:
            raise RuntimeError("simulated driver fault")

    replica.backend = FaultyRunner(replica.backend, fail=once)  # type: ignore[attr-defined]
    problem = check_error(app.upscale(encode(noise(20, 20)), "scale=2"), {500})
    assert "simulated" not in problem["detail"], "internal error text leaked to the client"
    assert replica.failures == failures_before + 1  # type: ignore[attr-defined]
    assert app.state.pool.alive()
    assert app.request("GET", "/healthz").status_code == 200
    check_image(app.upscale(encode(noise(20, 20)), "scale=2"), (40, 40))
    assert app.state.admission.admitted == 0


# A replica thread killed by SystemExit is reported by pytest's thread-exception hook: expected here.
THREAD_DEATH = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def dying(call: int) -> None:
    raise SystemExit("simulated: the replica's thread is going away")


@THREAD_DEATH
def test_replica_thread_death_turns_health_red(weights_dir: Path) -> None:
    app = InProcessApp(make_settings(weights_dir, models=["x2"]))
    try:
        assert app.request("GET", "/healthz").status_code == 200
        replica = app.state.pool.replicas[0]
        replica.backend = FaultyRunner(replica.backend, fail=dying)
        # The request whose batch killed the replica gets an error, not a hang.
        check_error(app.upscale(encode(noise(20, 20)), "scale=2", timeout=15), {500, 503})
        replica.thread.join(5)
        assert not app.state.pool.alive()
        check_error(app.request("GET", "/healthz"), {503})
        check_error(app.request("GET", "/readyz"), {503})
        # New requests are refused at once (503 + Retry-After) instead of queueing for a dead replica.
        started = time.perf_counter()
        response = app.upscale(encode(noise(20, 20)), "scale=2", timeout=10)
        check_error(response, {503})
        assert "retry-after" in response.headers
        assert time.perf_counter() - started < 2
        assert app.state.admission.admitted == 0
    finally:
        app.close()


@THREAD_DEATH
def test_request_queued_behind_a_dying_replica_is_answered(weights_dir: Path) -> None:
    app = InProcessApp(make_settings(weights_dir, models=["x2"], max_concurrent=2))
    try:
        replica = app.state.pool.replicas[0]
        pool = app.state.pool

        def die_when_another_job_waits(call: int) -> None:
            deadline = time.monotonic() + 5
            while pool.pending == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            raise SystemExit("simulated")

        faulty = FaultyRunner(replica.backend, fail=die_when_another_job_waits)
        replica.backend = faulty

        async def two_requests() -> list[object]:
            first = asyncio.ensure_future(app.client.post("/v1/superresolve?scale=2", content=encode(noise(20, 20)),
                                                          headers={"content-type": "image/png"}))
            while not faulty.entered.is_set():
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(app.client.post("/v1/superresolve?scale=2", content=encode(noise(24, 24)),
                                                           headers={"content-type": "image/png"}))
            done, pending = await asyncio.wait([first, second], timeout=5)
            for task in pending:
                task.cancel()
            return [t.result() if t in done else None for t in (first, second)]

        first, second = app.call(two_requests, timeout=20)
        assert first is not None, "the request whose batch killed the replica was not answered"
        assert second is not None, "the request queued behind the dying replica was never answered"
        check_error(second, {500, 503})  # type: ignore[arg-type]
    finally:
        app.close()


# --- a client that goes away -------------------------------------------------------------------


async def disconnecting_request(app: InProcessApp, body: bytes, query: str, after: float = 0.0) -> list[dict]:
    """Drive the ASGI app as uvicorn does (spec 2.3: disconnects are reported through receive()), and
    disconnect `after` seconds after the first body bytes of the response arrive."""
    got_body = asyncio.Event()
    sent_request = False
    messages: list[dict] = []

    async def receive() -> dict:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": body, "more_body": False}
        await got_body.wait()
        await asyncio.sleep(after)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            got_body.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/superresolve", "raw_path": b"/v1/superresolve",
        "query_string": query.encode(), "root_path": "", "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"content-type", b"image/png"),
                    (b"content-length", str(len(body)).encode())],
    }
    await app.app(scope, receive, send)
    return messages


def request_threads() -> set[threading.Thread]:
    """The threads that run requests' engine work (service/processing.py: run_in_thread, prefetched)."""
    return {t for t in threading.enumerate() if t.name.startswith("upscale-") and t.is_alive()}


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


TALL = encode(noise(640, 16, seed=11))  # 20 tile rows of 32 px: 20 bands


def test_client_disconnect_frees_its_work(app: InProcessApp, replica: object) -> None:
    """A tall image streams band by band; the client leaves after the first bytes: the work stops early,
    the in-flight gauge and the pool's queue go back to zero, and the slots are free for the next requests."""
    slow = FaultyRunner(replica.backend, delay=0.03)  # type: ignore[attr-defined]
    replica.backend = slow  # type: ignore[attr-defined]
    full = app.upscale(TALL, "scale=2")
    check_image(full, (32, 1280))
    full_calls = slow.calls

    slow.calls = 0
    messages = app.call(disconnecting_request, app, TALL, "scale=2", timeout=30)
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 200
    state = app.state
    assert wait_until(lambda: state.admission.admitted == 0 and state.pool.pending == 0, 10)
    assert state.metrics.registry.get_sample_value("imdn_requests_in_flight") == 0
    assert state.metrics.registry.get_sample_value("imdn_queue_depth") == 0
    time.sleep(0.3)
    calls_at_rest = slow.calls
    time.sleep(0.5)
    assert slow.calls == calls_at_rest, "the network kept running for a client that had left"
    assert calls_at_rest < full_calls * 0.7, (calls_at_rest, full_calls)
    # Both processing slots are free again: two requests at once go through.
    replica.backend = slow.inner  # type: ignore[attr-defined]

    async def two() -> list[httpx.Response]:
        return list(await asyncio.gather(*(app.client.post("/v1/superresolve?scale=2", content=encode(noise(16, 16)),
                                                           headers={"content-type": "image/png"})
                                           for _ in range(2))))

    for response in app.call(two, timeout=20):
        check_image(response, (32, 32))


def test_client_disconnect_leaves_no_thread_behind(app: InProcessApp, replica: object) -> None:
    earlier = request_threads()
    # Leave while the request thread waits for the next band (each band takes > 0.5 s here).
    replica.backend = FaultyRunner(replica.backend, delay=0.5)  # type: ignore[attr-defined]
    app.call(disconnecting_request, app, TALL, "scale=2", 0.1, timeout=30)
    assert wait_until(lambda: not (request_threads() - earlier), 3), \
        f"still running: {sorted(t.name for t in request_threads() - earlier)}"


# --- SIGTERM under load ----------------------------------------------------------------------------


def scrape_gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


@pytest.fixture(scope="module")
def drained(weights_dir: Path, workdir: Path) -> Iterator[dict]:
    """Five requests in flight (2 processing, 3 waiting for a slot), then SIGTERM."""
    server = RealServer(weights_dir, workdir, IMDN_MODELS="x2", IMDN_MAX_CONCURRENT="2", IMDN_QUEUE_SIZE="8",
                        IMDN_DRAIN_TIMEOUT_S="60", IMDN_TILE_SIZE="64")
    server.wait_ready()
    data = encode(noise(128, 128, seed=12))
    try:
        with ThreadPoolExecutor(5) as executor:
            futures = [executor.submit(httpx.post, f"{server.url}/v1/superresolve?scale=2", content=data,
                                       headers={"content-type": "image/png"}, timeout=120) for _ in range(5)]
            deadline = time.monotonic() + 30
            while scrape_gauge(server.url, "imdn_requests_in_flight") < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            in_flight = scrape_gauge(server.url, "imdn_requests_in_flight")
            server.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            responses = []
            for future in futures:
                try:
                    responses.append(future.result(timeout=120))
                except Exception as exc:  # noqa: BLE001 - a failed in-flight request is what we look for
                    responses.append(exc)
            try:
                returncode = server.proc.wait(60)
            except subprocess.TimeoutExpired:
                returncode = None
            yield {"in_flight": in_flight, "responses": responses, "returncode": returncode,
                   "drain_s": time.monotonic() - signalled, "log": server.output()}
    finally:
        server.stop(signal.SIGKILL)


def test_sigterm_drains_in_flight_requests(drained: dict) -> None:
    assert drained["in_flight"] == 5, "the requests were not all in flight when SIGTERM was sent"
    for response in drained["responses"]:
        assert isinstance(response, httpx.Response), f"an in-flight request failed: {response!r}"
        check_image(response, (256, 256))
    assert "draining" in drained["log"]
    assert drained["returncode"] is not None, "the process did not exit after draining"
    assert "Traceback" not in drained["log"], drained["log"][-3000:]


def test_sigterm_exit_code_zero(drained: dict) -> None:
    """A drained shutdown exits 0 (uvicorn used to re-raise the SIGTERM: -15; fixed in be7ace2)."""
    assert drained["returncode"] == 0, drained["returncode"]


# --- bad model files at start-up --------------------------------------------------------------------


@pytest.mark.parametrize("case", ["empty-dir", "garbage-file", "wrong-model"])
def test_bad_weights_exit_fast_naming_the_file(tmp_path: Path, case: str) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    if case == "garbage-file":
        random_weights(weights)
        (weights / "imdn_x2.safetensors").write_bytes(b"this is not a safetensors file" * 10)
        culprit = "imdn_x2.safetensors"
    elif case == "wrong-model":
        random_weights(weights)
        (weights / "imdn_x2.safetensors").write_bytes((weights / "imdn_x4.safetensors").read_bytes())
        culprit = "imdn_x2.safetensors"
    else:
        culprit = "imdn_x2.safetensors"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "service", "--port", str(free_port())], cwd=tmp_path,
                          env=service_env(weights), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    assert done.returncode != 0, done.stderr[-2000:]
    assert culprit in done.stderr, done.stderr[-2000:]
    assert str(weights / culprit) in done.stderr
    assert elapsed < 30, f"took {elapsed:.1f} s to give up"
