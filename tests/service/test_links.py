"""GET /v1/superresolve (service/links.py, service/results.py): signed links, ETag and 304, the result cache,
against a real origin on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI

from sr_client import signed_link  # the client's link maker, checked by the service
from tests.origin_server import OriginServer

pytestmark = pytest.mark.anyio

KEY, OLD_KEY, STRANGER = "new-key-0123456789abcdef", "old-key-0123456789abcdef", "not-a-key-0123456789abcd"
APP = {"models": ["x2"], "backend": "torch", "content": "clean", "source_allow": ["127.0.0.1"],
       "url_keys": [KEY, OLD_KEY], "result_cache_mb": 8, "cache_max_age": 3600, "api_keys": ["api-key-1"]}
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def origin(make_image: Callable[..., bytes]) -> Iterator[OriginServer]:
    with OriginServer({"/cat.png": make_image(24, 16), "/dog.png": make_image(20, 20, seed=3),
                       "/owl.png": make_image(16, 20, seed=5)}) as server:
        yield server


@pytest.fixture(scope="module")
async def app_client(origin: OriginServer, make_settings: Callable[..., object]
                     ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    from tests.service.conftest import serve_in_process

    async with serve_in_process(make_settings(**APP)) as pair:  # type: ignore[arg-type]
        yield pair


def link(origin: OriginServer, path: str = "/cat.png", key: str = KEY, **options: object) -> str:
    return signed_link("", origin.url(path), key, **{"scale": 2, **options})  # type: ignore[arg-type]


def inference_calls(samples: Metrics) -> float:
    return sum(v for (name, _), v in samples.items() if name == "imdn_inference_seconds_count")


async def metrics(client: httpx.AsyncClient, parse: Callable[[str], Metrics]) -> Metrics:
    return parse((await client.get("/metrics")).text)


async def test_a_signed_link_serves_a_cacheable_image(app_client: tuple[FastAPI, httpx.AsyncClient],
                                                      origin: OriginServer) -> None:
    _, client = app_client
    response = await client.get(link(origin, format="webp"))  # no API key: the signature is the authorization
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert response.headers["x-output-size"] == "48x32"
    assert response.headers["cache-control"] == "public, max-age=3600"
    etag = response.headers["etag"]
    assert etag.startswith('"') and len(etag) > 20
    posted = await client.post("/v1/superresolve?scale=2&format=webp", content=origin.files["/cat.png"],
                               headers={"Content-Type": "image/png", "X-API-Key": "api-key-1"})
    assert posted.headers["etag"] == etag  # the same result, the same tag, whichever way the image came
    assert posted.headers["cache-control"] == "no-store"  # an upload's result is kept by its client only


async def test_signature_refusals(app_client: tuple[FastAPI, httpx.AsyncClient], origin: OriginServer,
                                  assert_problem: Callable[..., dict[str, object]]) -> None:
    _, client = app_client
    good = link(origin, path="/dog.png")
    assert (await client.get(good)).status_code == 200
    assert (await client.get(link(origin, path="/dog.png", key=OLD_KEY))).status_code == 200  # rotated: both held
    cases = {
        "wrong key": link(origin, path="/dog.png", key=STRANGER),
        "no sig": good.split("&sig=")[0],
        "mangled sig": good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),
        "scale changed": good.replace("scale=2", "scale=3"),
        "option added": good + "&format=webp",
        "url changed": good.replace("dog.png", "cat.png"),
        "expired": link(origin, path="/dog.png", expires=int(time.time()) - 1),
    }
    for what, url in cases.items():
        body = assert_problem(await client.get(url), 403)
        assert body["type"].endswith("bad-signature"), what  # type: ignore[union-attr]
    assert "expired" in str(assert_problem(await client.get(cases["expired"]), 403)["detail"])
    fresh = await client.get(link(origin, path="/dog.png", expires=int(time.time()) + 60))
    assert fresh.status_code == 200
    max_age = int(fresh.headers["cache-control"].split("max-age=")[1])
    assert 50 <= max_age <= 60  # no cache keeps it past the link's expiry


async def test_if_none_match_is_answered_before_any_work(app_client: tuple[FastAPI, httpx.AsyncClient],
                                                         origin: OriginServer,
                                                         parse_metrics: Callable[[str], Metrics]) -> None:
    _, client = app_client
    url = link(origin, format="jpeg")
    first = await client.get(url)
    assert first.status_code == 200
    before = await metrics(client, parse_metrics)
    again = await client.get(url, headers={"If-None-Match": f'"other", {first.headers["etag"]}'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["cache-control"] == "public, max-age=3600"
    assert inference_calls(await metrics(client, parse_metrics)) == inference_calls(before)
    assert (await client.get(url, headers={"If-None-Match": '"something-else"'})).status_code == 200


async def test_a_second_identical_get_comes_from_the_cache(app_client: tuple[FastAPI, httpx.AsyncClient],
                                                           origin: OriginServer,
                                                           parse_metrics: Callable[[str], Metrics]) -> None:
    _, client = app_client
    url = link(origin, path="/owl.png")
    first = await client.get(url)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    before = await metrics(client, parse_metrics)
    second = await client.get(url)
    assert second.status_code == 200 and second.headers["x-cache"] == "hit"
    assert second.content == first.content
    for name in ("etag", "x-model", "x-output-size", "x-metadata", "cache-control", "content-type"):
        assert second.headers[name] == first.headers[name]
    after = await metrics(client, parse_metrics)
    assert inference_calls(after) == inference_calls(before)  # no network ran
    hits = ("imdn_result_cache_lookups_total", (("result", "hit"),))
    assert after[hits] == before.get(hits, 0) + 1
    assert after[("imdn_result_cache_bytes", ())] >= len(first.content)


async def test_get_links_are_off_without_keys(
        start_app: Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]],
        origin: OriginServer, assert_problem: Callable[..., dict[str, object]]) -> None:
    plain = f"/v1/superresolve?url={origin.url('/cat.png')}&scale=2"
    async with start_app(**{**APP, "url_keys": []}) as (_, client):
        assert "IMDN_URL_KEYS" in str(assert_problem(await client.get(plain), 403)["detail"])
        assert_problem(await client.get(link(origin)), 403)  # signed, but nothing to check it with
    async with start_app(**{**APP, "url_keys": [], "url_unsigned": "allow"}) as (_, client):
        assert_problem(await client.get(plain), 401)  # unsigned links still need the API key, when one is set
        assert (await client.get(plain, headers={"X-API-Key": "api-key-1"})).status_code == 200
