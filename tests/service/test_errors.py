"""Every error a caller can get from the service, each as RFC 9457 problem+json, in-process."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI

from service.app import create_app

pytestmark = pytest.mark.anyio

URL = "/v1/superresolve"
PNG = {"Content-Type": "image/png"}
Problem = Callable[[httpx.Response, int], dict[str, object]]
StartApp = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]


# --- 400 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("scale=0", "scale"),
        ("scale=-1", "scale"),
        ("scale=1&content=clean", "only IMDN_AS runs"),
        ("scale=0.99", "scale"),
        ("scale=nan", "scale"),
        ("scale=inf", "scale"),
        ("scale=abc", "scale"),
        ("scale=1e9", "maximum"),
        ("scale=8.5", "maximum"),
        ("width=0", "width"),
        ("height=-5", "height"),
        ("width=70000", "width"),
        ("width=64&scale=2", "either scale or width/height"),
        ("sclae=2", "sclae"),  # unknown query parameter: a typo must not be ignored silently
        ("model=foo", "model"),
        ("content=painting&scale=2.5", "content"),
        ("format=tiff", "format"),
        ("fit=stretch&width=64&height=64", "fit"),
        ("frames=some", "frames"),
        ("quality=0&format=jpeg", "quality"),
        ("width=16", "target 16x12 (the aspect ratio kept) is smaller than the input 32x24"),
        ("height=12", "target 16x12 (the aspect ratio kept) is smaller than the input 32x24"),
        ("width=32&height=24&content=clean", "nothing for x2/x3/x4 to do"),
        ("width=40&height=20&fit=contain", "fit=contain in a 40x20 box would shrink the input 32x24"),
        ("width=32&height=10", "smaller than the input"),
        ("width=300", "more than 8"),  # over max_scale
    ],
)
async def test_superresolve_bad_parameter_400(client: httpx.AsyncClient, make_image: Callable[..., bytes],
                                              assert_problem: Problem, query: str, mentions: str) -> None:
    response = await client.post(f"{URL}?{query}", content=make_image(32, 24), headers=PNG)
    body = assert_problem(response, 400)
    assert mentions in str(body["detail"]), body
    assert str(body["type"]).endswith("/bad-request")
    assert body["instance"] == URL


async def test_superresolve_bad_form_field_400(client: httpx.AsyncClient, make_image: Callable[..., bytes],
                                              assert_problem: Problem) -> None:
    response = await client.post(URL, files={"image": ("in.png", make_image(32, 24), "image/png")},
                                 data={"scale": "zero"})
    assert "scale" in str(assert_problem(response, 400)["detail"])
    response = await client.post(URL, files={"image": ("in.png", make_image(32, 24), "image/png")},
                                 data={"colour": "blue"})
    assert "colour" in str(assert_problem(response, 400)["detail"])


async def test_superresolve_multipart_without_image_400(client: httpx.AsyncClient,
                                                        make_image: Callable[..., bytes],
                                                        assert_problem: Problem) -> None:
    response = await client.post(URL, files={"file": ("in.png", make_image(32, 24), "image/png")})
    assert "'image'" in str(assert_problem(response, 400)["detail"])


async def test_superresolve_malformed_multipart_400(client: httpx.AsyncClient, assert_problem: Problem) -> None:
    response = await client.post(URL, content=b"--nope\r\ngarbage",
                                 headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert_problem(response, 400)


# --- 401 ------------------------------------------------------------------------------


KEYS = ["first-key", "second-key"]


@pytest.fixture(scope="module")
async def keyed(start_app: StartApp) -> AsyncIterator[httpx.AsyncClient]:
    """An app with IMDN_API_KEYS set (one model, to start quickly)."""
    async with start_app(api_keys=KEYS, models=["x2"], backend="torch") as (_, client):
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic Zmlyc3Qta2V5Og=="},
        {"X-API-Key": "first-key-and-more"},
    ],
    ids=["missing", "wrong", "empty", "wrong-bearer", "basic", "prefix"],
)
async def test_superresolve_api_key_401(keyed: httpx.AsyncClient, make_image: Callable[..., bytes],
                                        assert_problem: Problem, headers: dict[str, str]) -> None:
    response = await keyed.post(URL, content=make_image(16, 16), headers={**PNG, **headers})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_models_api_key_401(keyed: httpx.AsyncClient, assert_problem: Problem) -> None:
    assert_problem(await keyed.get("/v1/models"), 401)
    assert (await keyed.get("/v1/models", headers={"X-API-Key": KEYS[0]})).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": KEYS[0]}, {"X-API-Key": KEYS[1]}, {"Authorization": f"Bearer {KEYS[1]}"}],
    ids=["x-api-key", "second-key", "bearer"],
)
async def test_superresolve_api_key_accepted(keyed: httpx.AsyncClient, make_image: Callable[..., bytes],
                                             headers: dict[str, str]) -> None:
    response = await keyed.post(URL, content=make_image(16, 16), headers={**PNG, **headers})
    assert response.status_code == 200, response.text
    assert response.headers["x-output-size"] == "32x32"


async def test_superresolve_api_key_bearer_any_case(keyed: httpx.AsyncClient,
                                                    make_image: Callable[..., bytes]) -> None:
    response = await keyed.post(URL, content=make_image(16, 16), headers={**PNG, "Authorization": f"bearer {KEYS[0]}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_api_key_not_needed(keyed: httpx.AsyncClient, path: str) -> None:
    """Kubelet probes and Prometheus scrapes carry no key."""
    assert (await keyed.get(path)).status_code == 200


# --- 413 ------------------------------------------------------------------------------


async def test_superresolve_upload_too_large_413(client: httpx.AsyncClient, assert_problem: Problem,
                                                 main_limits: dict[str, int]) -> None:
    body = b"\x89PNG" + b"\0" * main_limits["max_upload_bytes"]
    response = await client.post(URL, content=body, headers=PNG)  # httpx sends Content-Length
    assert "upload" in str(assert_problem(response, 413)["detail"])


async def test_superresolve_chunked_upload_too_large_413(client: httpx.AsyncClient,
                                                         assert_problem: Problem) -> None:
    """No Content-Length (chunked upload): the limit still holds while the body streams in."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"\0" * 8192

    response = await client.post(URL, content=chunks(), headers=PNG)
    assert "content-length" not in response.request.headers
    assert "limit" in str(assert_problem(response, 413)["detail"])


async def test_superresolve_input_pixels_413(client: httpx.AsyncClient, make_image: Callable[..., bytes],
                                             assert_problem: Problem) -> None:
    response = await client.post(URL, content=make_image(129, 128), headers=PNG)  # limit is 128*128
    assert "pixels" in str(assert_problem(response, 413)["detail"])
    ok = await client.post(URL, content=make_image(128, 128), headers=PNG)
    assert ok.status_code == 200, ok.text


async def test_superresolve_decompression_bomb_413(client: httpx.AsyncClient, assert_problem: Problem) -> None:
    """A tiny file that claims a huge canvas is refused from its header, before any pixel is decoded."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buffer, format="PNG", optimize=True)
    assert len(buffer.getvalue()) < 150_000
    assert_problem(await client.post(URL, content=buffer.getvalue(), headers=PNG), 413)


async def test_superresolve_output_pixels_413(client: httpx.AsyncClient, make_image: Callable[..., bytes],
                                              assert_problem: Problem) -> None:
    response = await client.post(f"{URL}?scale=8", content=make_image(100, 100), headers=PNG)  # 640k > 300k
    assert "output" in str(assert_problem(response, 413)["detail"])


# --- 415 and 422 ----------------------------------------------------------------------


async def test_superresolve_text_as_png_415(client: httpx.AsyncClient, assert_problem: Problem) -> None:
    response = await client.post(URL, content=b"hello, this is text", headers=PNG)
    assert_problem(response, 415)


async def test_superresolve_text_plain_415(client: httpx.AsyncClient, make_image: Callable[..., bytes],
                                           assert_problem: Problem) -> None:
    response = await client.post(URL, content=make_image(16, 16), headers={"Content-Type": "text/plain"})
    assert "text/plain" in str(assert_problem(response, 415)["detail"])


async def test_superresolve_json_body_415(client: httpx.AsyncClient, assert_problem: Problem) -> None:
    assert_problem(await client.post(URL, json={"image": "https://example.test/a.png"}), 415)


async def test_superresolve_empty_body_415(client: httpx.AsyncClient, assert_problem: Problem) -> None:
    response = await client.post(URL, content=b"", headers=PNG)
    assert "empty" in str(assert_problem(response, 415)["detail"])


async def test_superresolve_truncated_png_422(client: httpx.AsyncClient, make_image: Callable[..., bytes],
                                              assert_problem: Problem) -> None:
    data = make_image(64, 64)
    response = await client.post(URL, content=data[: len(data) // 2], headers=PNG)
    body = assert_problem(response, 422)
    assert "truncated" in str(body["detail"]) or "corrupt" in str(body["detail"])
    assert str(body["type"]).endswith("/unprocessable-image")


@pytest.mark.parametrize(
    ("fmt", "keep"),
    [
        ("JPEG", 0.8),
        ("GIF", 0.5),
        ("PNG", 0.99),
        pytest.param("WEBP", 0.98),
        pytest.param("JPEG", 0.1),  # cut inside the header
    ],
    ids=["jpeg-data", "gif-data", "png-end", "webp-end", "jpeg-header"],
)
async def test_superresolve_truncated_image_422(client: httpx.AsyncClient, make_image: Callable[..., bytes],
                                                assert_problem: Problem, fmt: str, keep: float) -> None:
    data = make_image(64, 64, fmt)
    response = await client.post(URL, content=data[: int(len(data) * keep)],
                                 headers={"Content-Type": f"image/{fmt.lower()}"})
    assert_problem(response, 422)


async def test_superresolve_server_survives_bad_inputs(client: httpx.AsyncClient,
                                                       make_image: Callable[..., bytes]) -> None:
    """After every kind of refusal, a good request still works."""
    response = await client.post(URL, content=make_image(16, 16), headers=PNG)
    assert response.status_code == 200, response.text


# --- 404 / 405 ------------------------------------------------------------------------


async def test_unknown_route_404(client: httpx.AsyncClient, assert_problem: Problem) -> None:
    assert_problem(await client.get("/v2/nothing"), 404)


async def test_superresolve_put_405_names_both_methods(client: httpx.AsyncClient, assert_problem: Problem) -> None:
    response = await client.put(URL)
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET, POST"  # two routes share the path (GET: signed links)
    assert_problem(await client.get(URL), 400)  # a GET link without its url


# --- 429 ------------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# A request that keeps its slot for a while on one CPU thread: many 32 px tiles of a 64x160 image.
SLOW = {"models": ["x2"], "backend": "torch", "tile_size": 32, "memory_budget_mb": 48}


async def test_superresolve_queue_full_429(start_app: StartApp, make_image: Callable[..., bytes],
                                           assert_problem: Problem, parse_metrics: Callable[..., dict]) -> None:
    async with start_app(max_concurrent=1, queue_size=0, **SLOW) as (app, client):
        admission = app.state.service.admission
        slow = asyncio.create_task(client.post(URL, content=make_image(64, 160), headers=PNG))
        await wait_until(lambda: admission.admitted == 1)
        refused = await client.post(URL, content=make_image(16, 16), headers=PNG)
        assert not slow.done(), "the slow request finished too soon to hold its slot"
        body = assert_problem(refused, 429)
        assert str(body["type"]).endswith("/queue-full")
        retry_after = refused.headers["retry-after"]
        assert retry_after.isdigit() and int(retry_after) >= 1
        held = await slow
        assert held.status_code == 200, held.text
        samples = parse_metrics((await client.get("/metrics")).text)
        assert samples[("imdn_rejected_requests_total", (("reason", "queue_full"),))] == 1
        after = await client.post(URL, content=make_image(16, 16), headers=PNG)
        assert after.status_code == 200, after.text


async def test_superresolve_queue_waits_then_429(start_app: StartApp, make_image: Callable[..., bytes],
                                                 assert_problem: Problem,
                                                 parse_metrics: Callable[..., dict]) -> None:
    """One running, one waiting (queue depth 1), the third refused; the waiting one is served afterwards."""
    async with start_app(max_concurrent=1, queue_size=1, **SLOW) as (app, client):
        admission = app.state.service.admission
        running = asyncio.create_task(client.post(URL, content=make_image(128, 320), headers=PNG))
        # Wait until it holds the slot: while it is still taking the slot, `waiting` is 1 for a moment,
        # and a scrape just after that moment would find no one waiting.
        await wait_until(lambda: admission.running == admission.concurrency)
        waiting = asyncio.create_task(client.post(URL, content=make_image(16, 16), headers=PNG))
        await wait_until(lambda: admission.waiting == 1)
        samples = parse_metrics((await client.get("/metrics")).text)
        assert samples[("imdn_queue_depth", ())] == 1
        assert samples[("imdn_requests_in_flight", ())] == 2
        assert_problem(await client.post(URL, content=make_image(16, 16), headers=PNG), 429)
        assert (await running).status_code == 200
        served = await waiting
        assert served.status_code == 200, served.text
        samples = parse_metrics((await client.get("/metrics")).text)
        assert samples[("imdn_queue_depth", ())] == 0
        assert samples[("imdn_requests_in_flight", ())] == 0


# --- 408 / 503 / 504 ------------------------------------------------------------------------


async def test_superresolve_before_ready_503(make_settings: Callable[..., object], make_image: Callable[..., bytes],
                                             assert_problem: Problem) -> None:
    """An app whose lifespan has not run: not ready, so POST and /readyz say 503, /healthz is alive."""
    app = create_app(make_settings(models=["x2"]))  # type: ignore[arg-type]
    assert app.state.service.ready is False
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        response = await client.post(URL, content=make_image(16, 16), headers=PNG)
        body = assert_problem(response, 503)
        assert str(body["type"]).endswith("/not-ready")
        assert response.headers["retry-after"].isdigit()
        assert_problem(await client.get("/readyz"), 503)
        assert (await client.get("/healthz")).status_code == 200


async def test_superresolve_draining_503(main_app: tuple[FastAPI, httpx.AsyncClient],
                                         make_image: Callable[..., bytes], assert_problem: Problem) -> None:
    app, client = main_app
    state = app.state.service
    state.draining = True
    try:
        assert "draining" in str(assert_problem(await client.get("/readyz"), 503)["detail"])
        assert_problem(await client.post(URL, content=make_image(16, 16), headers=PNG), 503)
        assert (await client.get("/healthz")).status_code == 200
    finally:
        state.draining = False
    assert (await client.get("/readyz")).status_code == 200


async def test_readyz_flips_after_warmup(make_settings: Callable[..., object]) -> None:
    """Polled from the start of the lifespan: 503 while the pool loads and warms, then 200 for good."""
    app = create_app(make_settings())  # type: ignore[arg-type]  # all four models, default backend: ~seconds
    seen: list[int] = []
    stop = asyncio.Event()
    ready = asyncio.Event()

    async def lifespan() -> None:
        async with app.router.lifespan_context(app):
            ready.set()
            await stop.wait()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        task = asyncio.create_task(lifespan())
        try:
            while not ready.is_set() or not seen or seen[-1] != 200:
                seen.append((await client.get("/readyz")).status_code)
                assert (await client.get("/healthz")).status_code == 200  # alive throughout
                await asyncio.sleep(0.02)
                assert not task.done(), "the lifespan failed"
        finally:
            stop.set()
            await task
    assert seen[0] == 503, seen
    flip = seen.index(200)
    assert set(seen[:flip]) == {503} and set(seen[flip:]) == {200}, seen


async def test_superresolve_request_timeout_504(start_app: StartApp, make_image: Callable[..., bytes],
                                                assert_problem: Problem) -> None:
    """Past request_timeout_s before the first byte: 504 problem+json, and the slot is given back."""
    async with start_app(request_timeout_s=0.1, **SLOW) as (app, client):
        # One row of 32 tiles: the first (and only) band takes well over 0.1 s.
        response = await client.post(URL, content=make_image(1024, 32), headers=PNG)
        assert "time limit" in str(assert_problem(response, 504)["detail"])
        assert app.state.service.admission.admitted == 0
        # The next request gets its slot back.
        assert (await client.post(URL, content=make_image(16, 16), headers=PNG)).status_code == 200


async def test_superresolve_slow_upload_408(start_app: StartApp, assert_problem: Problem) -> None:
    """A body that trickles in for longer than request_timeout_s is cut off with 408."""

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"\0" * 100
            await asyncio.sleep(0.1)

    async with start_app(request_timeout_s=0.3, models=["x2"], backend="torch") as (app, client):
        response = await client.post(URL, content=trickle(), headers=PNG)
        assert "did not arrive" in str(assert_problem(response, 408)["detail"])
        assert app.state.service.admission.admitted == 0
