"""The other endpoints in-process: /v1/models, /metrics, /healthz, /readyz, /, the OpenAPI document, and CORS."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from model.plan import scale_policy
from service.app import create_app
from service.config import Settings

pytestmark = pytest.mark.anyio

URL = "/v1/superresolve"
PNG = {"Content-Type": "image/png"}
StartApp = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- /v1/models, probes, index ----------------------------------------------------------


async def test_models_lists_loaded_models(client: httpx.AsyncClient, weights_dir: Path) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"x2", "x3", "x4", "as"}
    for name, info in models.items():
        path = weights_dir / f"imdn_{name}.safetensors"
        assert info["parameters"] > 100_000, info
        assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert info["weights"] == path.name  # the file's name, never where it lies on the server
        assert str(weights_dir) not in response.text
        assert info["scale"]
    assert body["devices"] == ["cpu"]
    assert body["backend"]
    assert body["ready"] is True
    assert body["limits"]["max_upload_bytes"] > 0
    assert body["max_scale"] == 8.0


async def test_models_state_the_scale_policy_that_requests_follow(client: httpx.AsyncClient,
                                                                   make_image: Callable[..., bytes],
                                                                   start_app: StartApp) -> None:
    # The web page shows this text as its hint: it must describe what a request really gets.
    body = (await client.get("/v1/models")).json()
    assert (body["content"], body["any_scale"]) == ("photo", "downscale")
    assert "IMDN any-scale (IMDN_AS) at every scale up to 4" in body["scale_policy"]
    for scale in ("2", "2.5"):
        response = await client.post(f"{URL}?scale={scale}", content=make_image(32, 24), headers=PNG)
        assert response.headers["x-model"] == "as"
    async with start_app(content="clean") as (_, other):
        body = (await other.get("/v1/models")).json()
        assert "next larger integer IMDN, then bicubic down" in body["scale_policy"]
        response = await other.post(f"{URL}?scale=2.5", content=make_image(32, 24), headers=PNG)
        assert response.headers["x-model"] == "x3+bicubic"
    async with start_app(content="clean", any_scale="as") as (_, other):
        body = (await other.get("/v1/models")).json()
        assert "other scales up to 4: bicubic to the size, then IMDN any-scale" in body["scale_policy"]
        response = await other.post(f"{URL}?scale=2.5", content=make_image(32, 24), headers=PNG)
        assert response.headers["x-model"] == "as"


async def test_content_per_request_overrides_the_server_default(client: httpx.AsyncClient,
                                                                make_image: Callable[..., bytes]) -> None:
    # A photo and a screenshot want different networks: the caller says which, whatever the server default.
    image = make_image(32, 24)
    for content, scale, label in (("clean", "2", "x2"), ("clean", "2.5", "x3+bicubic"), ("photo", "2", "as"),
                                  ("photo", "2.5", "as"), ("photo", "6", "x4+as")):
        response = await client.post(f"{URL}?scale={scale}&content={content}", content=image, headers=PNG)
        assert response.status_code == 200 and response.headers["x-model"] == label, (content, scale)
        form = await client.post(URL, files={"image": ("a.png", image, "image/png")},
                                 data={"scale": scale, "content": content})
        assert form.status_code == 200 and form.headers["x-model"] == label
    # an explicit model wins over the content
    response = await client.post(f"{URL}?scale=2.5&content=photo&model=x4", content=image, headers=PNG)
    assert response.headers["x-model"] == "x4+bicubic"


async def test_page_hint_before_models_load_is_the_default_policy(client: httpx.AsyncClient) -> None:
    # The page shows /v1/models' scale_policy once loaded; its built-in copy must say the same for the default.
    page = (await client.get("/")).text
    defaults = Settings.model_fields
    assert scale_policy(defaults["any_scale"].default, defaults["content"].default) in page
    assert '<link rel="icon" href="favicon.ico"' in page


async def test_favicon_is_an_icon(client: httpx.AsyncClient) -> None:
    response = await client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/x-icon"
    with Image.open(io.BytesIO(response.content)) as icon:
        assert icon.format == "ICO"
        assert (32, 32) in icon.info["sizes"] and (16, 16) in icon.info["sizes"]


async def test_healthz_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_ok_when_warm(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_index_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(("text/html", "application/json"))


# --- /metrics ---------------------------------------------------------------------------


async def test_metrics_exposes_families(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("imdn_http_requests_total", "imdn_http_request_duration_seconds_bucket", "imdn_queue_depth",
                 "imdn_requests_in_flight", "imdn_tiles_total", "imdn_queue_wait_seconds",
                 "imdn_inference_seconds", "imdn_model_load_seconds", "imdn_ready"):
        assert name in text, f"{name} missing from /metrics"
    assert 'le="120.0"' in text  # latency buckets reach two minutes


async def test_metrics_has_process_and_platform_families(client: httpx.AsyncClient,
                                                         parse_metrics: Callable[[str], Samples]) -> None:
    # The standard collectors a Prometheus operator expects next to the service's own families.
    samples = parse_metrics((await client.get("/metrics")).text)
    names = {name for name, _ in samples}
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "process_max_fds", "process_start_time_seconds", "python_info",
                 "python_gc_objects_collected_total"):
        assert name in names, f"{name} missing from /metrics"
    assert samples[("process_resident_memory_bytes", ())] > 50e6  # this process holds a model pool
    assert samples[("process_open_fds", ())] >= 3


async def test_metrics_no_gpu_families_on_cpu(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    assert "imdn_gpu_" not in text


async def test_metrics_move_after_request(client: httpx.AsyncClient, make_image: Callable[..., bytes],
                                          parse_metrics: Callable[[str], Samples]) -> None:
    route = (("method", "POST"), ("route", URL), ("status", "200"))
    before = parse_metrics((await client.get("/metrics")).text)
    response = await client.post(f"{URL}?scale=2&content=clean", content=make_image(32, 24), headers=PNG)
    assert response.status_code == 200
    after = parse_metrics((await client.get("/metrics")).text)

    def delta(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("imdn_http_requests_total", route) == 1
    assert delta("imdn_http_request_duration_seconds_count", (("method", "POST"), ("route", URL))) == 1
    assert delta("imdn_tiles_total", (("model", "x2"),)) >= 1
    assert delta("imdn_output_pixels_total", (("model", "x2"),)) == 64 * 48
    assert delta("imdn_queue_wait_seconds_count", ()) == 1
    assert after[("imdn_requests_in_flight", ())] == 0
    assert after[("imdn_queue_depth", ())] == 0
    assert after[("imdn_ready", ())] == 1


async def test_metrics_count_errors_by_status(client: httpx.AsyncClient,
                                              parse_metrics: Callable[[str], Samples]) -> None:
    labels = (("method", "POST"), ("route", URL), ("status", "415"))
    before = parse_metrics((await client.get("/metrics")).text).get(("imdn_http_requests_total", labels), 0.0)
    await client.post(URL, content=b"text", headers=PNG)
    after = parse_metrics((await client.get("/metrics")).text)[("imdn_http_requests_total", labels)]
    assert after == before + 1


# --- OpenAPI ----------------------------------------------------------------------------


async def test_openapi_documents_superresolve(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    post = spec["paths"][URL]["post"]
    query = {p["name"] for p in post["parameters"] if p["in"] == "query"}
    assert {"scale", "width", "height", "model", "format", "quality", "fit", "frames", "metadata"} <= query
    schemas = {p["name"]: p["schema"] for p in post["parameters"]}

    def choices(schema: dict) -> set[str]:  # an enum, directly or as the non-null branch of anyOf
        return set(schema.get("enum") or next(s["enum"] for s in schema["anyOf"] if "enum" in s))

    assert choices(schemas["fit"]) == {"fill", "contain", "cover"} and schemas["fit"]["default"] == "fill"
    assert choices(schemas["frames"]) == {"all", "first"} and schemas["frames"]["default"] == "all"
    assert {"gif", "avif"} <= choices(schemas["format"])
    assert choices(schemas["metadata"]) == {"keep", "nogps", "strip"}
    assert next(s["minimum"] for s in schemas["scale"]["anyOf"] if "minimum" in s) == 1
    content = post["requestBody"]["content"]
    assert "multipart/form-data" in content
    assert "image" in content["multipart/form-data"]["schema"]["properties"]
    assert "image/*" in content
    assert {"image/png", "image/webp", "image/jpeg", "image/avif", "image/gif"} <= set(
        post["responses"]["200"]["content"])
    for status in ("400", "401", "408", "413", "415", "422", "429", "503", "504"):
        assert status in post["responses"], f"{status} not documented"
        described = post["responses"][status]["content"]
        assert list(described) == ["application/problem+json"], (status, described)
        schema = described["application/problem+json"]["schema"]
        assert {"type", "title", "status", "detail"} <= set(schema["required"])


async def test_openapi_documents_other_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/models", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert "503" in paths["/readyz"]["get"]["responses"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# --- CORS -------------------------------------------------------------------------------

ORIGIN = "http://example.test"


@pytest.fixture(scope="module")
async def cors_client(start_app: StartApp) -> AsyncIterator[httpx.AsyncClient]:
    async with start_app(cors_origins=[ORIGIN], models=["x2"], backend="torch") as (_, client):
        yield client


def preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key"}


async def test_cors_preflight_allowed_origin(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.options(URL, headers=preflight(ORIGIN))
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()


async def test_cors_exposes_result_headers(cors_client: httpx.AsyncClient, make_image: Callable[..., bytes]) -> None:
    """A page on the allowed origin can read what was done, e.g. X-Output-Size."""
    response = await cors_client.post(URL, content=make_image(16, 16), headers={**PNG, "Origin": ORIGIN})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-output-size", "x-input-size", "x-model", "x-scale", "x-request-id", "server-timing"} <= exposed


async def test_cors_other_origin_refused(cors_client: httpx.AsyncClient, make_image: Callable[..., bytes]) -> None:
    other = "http://evil.test"
    response = await cors_client.options(URL, headers=preflight(other))
    assert response.status_code >= 400
    assert "access-control-allow-origin" not in response.headers
    response = await cors_client.post(URL, content=make_image(16, 16), headers={**PNG, "Origin": other})
    assert "access-control-allow-origin" not in response.headers


async def test_cors_off_by_default(client: httpx.AsyncClient) -> None:
    response = await client.options(URL, headers=preflight(ORIGIN))
    assert "access-control-allow-origin" not in response.headers


async def test_cors_preflight_needs_no_key(make_settings: Callable[..., object]) -> None:
    """Browsers send preflights without credentials: they must not be refused with 401."""
    app = create_app(make_settings(cors_origins=[ORIGIN], api_keys=["k"]))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        response = await client.options(URL, headers=preflight(ORIGIN))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
