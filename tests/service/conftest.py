"""Shared fixtures for the service tests: random weights, settings, in-process apps, real uvicorn processes, images.

In-process tests are ``async`` and run on anyio's pytest plugin (bundled with anyio, a FastAPI dependency):
the app's own lifespan (``app.router.lifespan_context``) loads and warms the pool, and an
``httpx.AsyncClient`` over ``httpx.ASGITransport`` talks to it. Process tests start
``python -m service`` on a free loopback port and always terminate it.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

if str(REPO) not in sys.path:  # `pytest tests/service` without the package installed
    sys.path.insert(0, str(REPO))

from fastapi import FastAPI  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from tests.live_service import ServiceProcess, run_service  # noqa: E402
from tests.samples import random_weights, smooth_image  # noqa: E402

PROBLEM_FIELDS = ("type", "title", "status", "detail")


# --- environment and weights ------------------------------------------------------------


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-initialised weights for x2/x3/x4/as (seed 0): the project's own may still be training."""
    return random_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(autouse=True, scope="session")
def service_env(weights_dir: Path) -> Iterator[None]:
    """No stray IMDN_* from the developer's shell; IMDN_WEIGHTS -> the random weights, one CPU thread."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("IMDN_")]:
            mp.delenv(name)
        mp.setenv("IMDN_WEIGHTS", str(weights_dir))
        mp.setenv("IMDN_THREADS", "1")
        yield


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Session scope, so session-scoped async fixtures (the shared app) and the tests share one event loop."""
    return "asyncio"


# --- in-process apps --------------------------------------------------------------------


@pytest.fixture(scope="session")
def make_settings(weights_dir: Path) -> Callable[..., Settings]:
    """Settings(**overrides) on the CPU, one thread, the random weights, and no .env file."""

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"device": "cpu", "threads": 1, "weights": str(weights_dir)}
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


async def wait_ready(app: FastAPI, timeout: float = 120) -> None:
    """The lifespan returns once the weights are checked; the pool warms in the background."""
    state = app.state.service
    deadline = time.monotonic() + timeout
    while not state.ready:
        assert state.startup_error is None, state.startup_error
        assert time.monotonic() < deadline, "the model pool did not become ready"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def serve_in_process(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """create_app(settings) inside its lifespan, with an httpx client over the ASGI transport."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await wait_ready(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            yield app, client


@pytest.fixture(scope="session")
def start_app(
    make_settings: Callable[..., Settings],
) -> Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]:
    """`async with start_app(**overrides) as (app, client)`: a short-lived app with its own settings."""

    def start(**overrides: object) -> AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]:
        return serve_in_process(make_settings(**overrides))

    return start


# Limits of the shared app: small enough that a test can cross each with a tiny image.
MAIN_LIMITS = {"max_upload_bytes": 150_000, "max_input_pixels": 128 * 128, "max_output_pixels": 300_000}


@pytest.fixture(scope="session")
def main_limits() -> dict[str, int]:
    return dict(MAIN_LIMITS)


@pytest.fixture(scope="session")
async def main_app(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """One app with all four models and the default (auto) backend, shared by the tests that don't mutate it."""
    async with serve_in_process(make_settings(**MAIN_LIMITS)) as pair:
        yield pair


@pytest.fixture
async def client(main_app: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return main_app[1]


# --- images and answers -----------------------------------------------------------------


def encode_image(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    """A width x height RGB image encoded as `fmt` (PIL format name)."""
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(height, width, seed=seed)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def make_image() -> Callable[..., bytes]:
    """(width, height, fmt='PNG', seed=0) -> encoded image bytes."""
    return encode_image


def open_image(data: bytes) -> Image.Image:
    """Decode fully (a truncated or corrupt file raises), return the PIL image."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture(scope="session")
def decode_image() -> Callable[[bytes], Image.Image]:
    return open_image


def check_problem(response: httpx.Response, status: int) -> dict[str, object]:
    """Assert an RFC 9457 problem+json answer with `status`; return its body."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert isinstance(body, dict)
    for name in PROBLEM_FIELDS:
        assert name in body, f"problem body lacks {name!r}: {body}"
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.fixture(scope="session")
def assert_problem() -> Callable[[httpx.Response, int], dict[str, object]]:
    """(response, status) -> the problem+json body, after checking its shape."""
    return check_problem


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus exposition text -> {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture(scope="session")
def parse_metrics() -> Callable[[str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    return metric_samples


# --- real uvicorn processes -------------------------------------------------------------


@pytest.fixture(scope="session")
def launch_service(
    tmp_path_factory: pytest.TempPathFactory, weights_dir: Path,
) -> Callable[..., AbstractContextManager[ServiceProcess]]:
    """`with launch_service({"IMDN_...": ...}, wait=True, weights=...) as svc`: a process, stopped on exit.

    weights defaults to the random weights; None leaves IMDN_WEIGHTS unset (the project's defaults).
    """

    def launch(env: dict[str, str] | None = None, *, wait: bool = True,
               weights: str | None = str(weights_dir)) -> AbstractContextManager[ServiceProcess]:
        return run_service(tmp_path_factory.mktemp("service"), env, weights=weights, wait=wait)

    return launch
