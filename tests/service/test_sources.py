"""Sources by URL (service/sources.py) against a real origin on 127.0.0.1: the allowlist, private addresses,
redirects, and each way an origin fails, as a caller of POST /v1/superresolve sees them."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI

from service.config import Settings
from service.errors import BadRequestError
from service.sources import SourceFetcher, SourceForbiddenError, SourcePolicy, checked_url, is_public
from tests.origin_server import OriginServer

URL = "/v1/superresolve"
LIMIT = 150_000
# Fast start: one small network on torch, clean content so model=auto picks it.
APP = {"models": ["x2"], "backend": "torch", "content": "clean", "max_upload_bytes": LIMIT,
       "source_allow": ["127.0.0.1"], "source_timeout_s": 1.5}


@pytest.mark.parametrize(("address", "public"), [
    ("93.184.215.14", True), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False),  # cloud metadata (link-local)
    ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False),
    ("fd00:ec2::254", False), ("ff02::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False), ("64:ff9b::a00:1", False),  # v4 inside v6
    ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
])
def test_public_addresses_only(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_allow_entries() -> None:
    policy = SourcePolicy.from_entries(["images.example.com", "*.cdn.example", "10.0.0.0/8", "127.0.0.1"])
    assert policy.host_allowed("images.example.com") and policy.host_allowed("a.b.cdn.example")
    assert not policy.host_allowed("cdn.example") and not policy.host_allowed("evil.com")
    assert not policy.host_allowed("images.example.com.evil.com")
    assert policy.host_allowed("127.0.0.1") and policy.host_allowed("10.9.9.9")
    assert not policy.host_allowed("10.0.0.1.x")
    assert not policy.host_allowed("192.168.0.1")  # an address no entry names
    assert policy.address_allowed(ipaddress.ip_address("10.1.1.1"))
    assert not policy.address_allowed(ipaddress.ip_address("192.168.1.1"))
    anyone = SourcePolicy.from_entries(["*"])
    assert anyone.host_allowed("anything.example") and anyone.host_allowed("93.184.215.14")
    assert not anyone.address_allowed(ipaddress.ip_address("127.0.0.1"))  # '*' is any *public* host
    assert not SourcePolicy.from_entries([]).enabled


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.png", "file:///etc/passwd", "/relative.png", "http://",
                                 "http://user:pw@127.0.0.1/a.png", "http://[::1/a", "http://x/" + "a" * 3000])
def test_bad_urls(url: str) -> None:
    with pytest.raises(BadRequestError):
        checked_url(url)


@pytest.fixture(scope="module")
def origin(make_image: Callable[..., bytes]) -> Iterator[OriginServer]:
    files = {"/cat.png": make_image(24, 16), "/big.png": b"\x89PNG" + b"\0" * (LIMIT + 10), "/page.txt": b"<html>"}
    with OriginServer(files) as server:
        yield server


def settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **{"device": "cpu", **APP, **overrides})  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_connects_to_the_address_it_checked(origin: OriginServer) -> None:
    """The name is resolved once; the request goes to that address with the name in its Host header."""
    answers = iter([["127.0.0.1"], ["10.6.6.6"]])  # a rebinding resolver: a second lookup would get a private one

    async def resolve(host: str, port: int) -> list[str]:
        return next(answers)

    fetcher = SourceFetcher(settings(source_allow=["images.test", "127.0.0.1"]), resolve)
    try:
        data = await fetcher.fetch(origin.url("/cat.png", host="images.test"))
    finally:
        await fetcher.aclose()
    assert data == origin.files["/cat.png"]
    assert origin.seen[-1] == ("/cat.png", f"images.test:{origin.port}")


@pytest.mark.anyio
async def test_a_name_that_resolves_to_a_private_address_is_refused(origin: OriginServer) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "192.168.0.7"]  # one bad address is enough

    fetcher = SourceFetcher(settings(source_allow=["images.test"]), resolve)
    try:
        with pytest.raises(SourceForbiddenError, match="192.168.0.7"):
            await fetcher.fetch("http://images.test/a.png")
    finally:
        await fetcher.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("target", ["http://10.0.0.1/x.png", "http://[::ffff:10.0.0.1]/x.png",
                                    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"])
async def test_a_redirect_into_a_private_range_is_refused(origin: OriginServer, target: str) -> None:
    """Any public host may be fetched ('*'), the origin's loopback address is named; a redirect into a private
    range passes the host check but not the address check, and nothing is connected to."""
    fetcher = SourceFetcher(settings(source_allow=["*", "127.0.0.1"]))
    try:
        with pytest.raises(SourceForbiddenError, match="not a public address"):
            await fetcher.fetch(origin.url(f"/redirect?to={target}"))
    finally:
        await fetcher.aclose()


@pytest.fixture(scope="module")
async def app_client(origin: OriginServer) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    from tests.service.conftest import serve_in_process

    async with serve_in_process(settings()) as pair:
        yield pair


async def post_url(client: httpx.AsyncClient, url: str, query: str = "") -> httpx.Response:
    return await client.post(f"{URL}?{query}", data={"url": url, "scale": "2"})


@pytest.mark.anyio
async def test_upscales_the_image_at_a_url(app_client: tuple[FastAPI, httpx.AsyncClient], origin: OriginServer,
                                          decode_image: Callable[[bytes], object]) -> None:
    _, client = app_client
    by_form = await post_url(client, origin.url("/cat.png"))
    assert by_form.status_code == 200, by_form.text
    assert by_form.headers["x-output-size"] == "48x32"
    by_query = await client.post(f"{URL}?url={origin.url('/cat.png')}&scale=2")
    assert by_query.status_code == 200, by_query.text
    assert by_query.headers["etag"] == by_form.headers["etag"]
    uploaded = await client.post(f"{URL}?scale=2", content=origin.files["/cat.png"],
                                 headers={"Content-Type": "image/png"})
    assert uploaded.headers["etag"] == by_form.headers["etag"]  # the same bytes, the same result
    multipart = await client.post(URL, files={"url": (None, origin.url("/cat.png")), "scale": (None, "2")})
    assert multipart.status_code == 200, multipart.text
    assert multipart.headers["etag"] == by_form.headers["etag"]


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "status", "words"), [
    ("/slow", 504, "did not arrive within 1.5 s"),
    ("/endless", 413, "over the limit of 150,000 bytes"),
    ("/big.png", 413, "150,014 bytes"),  # refused from its Content-Length
    ("/liar", 502, "broke off after"),  # Content-Length 100000, 1000 bytes sent
    ("/status/404", 502, "answered 404 Not Found"),
    ("/status/500", 502, "answered 500 Internal Server Error"),
    ("/loop", 502, "redirected more than 3 times"),
    ("/page.txt", 415, "text/plain, not an image"),
    ("/redirect?to=http://10.0.0.1/x.png", 403, "'10.0.0.1' is not in"),
    ("/redirect?to=http://169.254.169.254/latest/meta-data/", 403, "'169.254.169.254' is not in"),
    ("/redirect?to=file:///etc/passwd", 403, "not plain http"),
])
async def test_origin_failures(app_client: tuple[FastAPI, httpx.AsyncClient], origin: OriginServer,
                               assert_problem: Callable[..., dict[str, object]], path: str, status: int,
                               words: str) -> None:
    _, client = app_client
    response = await post_url(client, origin.url(path))
    body = assert_problem(response, status)
    assert words in str(body["detail"])


@pytest.mark.anyio
async def test_an_origin_that_is_down(app_client: tuple[FastAPI, httpx.AsyncClient],
                                      assert_problem: Callable[..., dict[str, object]]) -> None:
    from tests.live_service import free_port

    _, client = app_client
    body = assert_problem(await post_url(client, f"http://127.0.0.1:{free_port()}/cat.png"), 502)
    assert "cannot connect" in str(body["detail"])


@pytest.mark.anyio
async def test_hosts_not_allowed(app_client: tuple[FastAPI, httpx.AsyncClient], origin: OriginServer,
                                 assert_problem: Callable[..., dict[str, object]]) -> None:
    _, client = app_client
    # localhost is 127.0.0.1, but the allowlist names the address, not the name
    assert_problem(await post_url(client, origin.url("/cat.png", host="localhost")), 403)
    assert_problem(await post_url(client, "http://[::ffff:127.0.0.1]/cat.png"), 403)
    assert_problem(await post_url(client, "ftp://127.0.0.1/cat.png"), 400)
    both = await client.post(f"{URL}?url={origin.url('/cat.png')}", content=origin.files["/cat.png"],
                             headers={"Content-Type": "image/png"})
    assert_problem(both, 400)


@pytest.mark.anyio
async def test_redirect_to_an_allowed_place_is_followed(app_client: tuple[FastAPI, httpx.AsyncClient],
                                                        origin: OriginServer) -> None:
    _, client = app_client
    response = await post_url(client, origin.url("/redirect?to=/cat.png"))
    assert response.status_code == 200, response.text


@pytest.mark.anyio
async def test_refusals_are_logged_without_the_query(app_client: tuple[FastAPI, httpx.AsyncClient],
                                                     origin: OriginServer, caplog: pytest.LogCaptureFixture) -> None:
    _, client = app_client
    with caplog.at_level(logging.WARNING, logger="service"):
        await post_url(client, origin.url("/status/404?token=SECRET123"))
    logged = [r.getMessage() for r in caplog.records if "source refused" in r.getMessage()]
    assert logged and f"127.0.0.1:{origin.port}/status/404" in logged[-1]
    assert "SECRET123" not in caplog.text


@pytest.mark.anyio
async def test_fetching_is_off_by_default(start_app: Callable[..., AbstractAsyncContextManager[
        tuple[FastAPI, httpx.AsyncClient]]], origin: OriginServer,
        assert_problem: Callable[..., dict[str, object]]) -> None:
    requests_before = len(origin.seen)
    async with start_app(models=["x2"], backend="torch", content="clean") as (_, client):
        body = assert_problem(await post_url(client, origin.url("/cat.png")), 403)
        assert "IMDN_SOURCE_ALLOW" in str(body["detail"])
    assert len(origin.seen) == requests_before  # nothing was fetched


@pytest.mark.anyio
async def test_a_fetch_holds_an_upload_place_not_a_slot(origin: OriginServer,
                                                        parse_metrics: Callable[[str], dict[object, float]],
                                                        assert_problem: Callable[..., dict[str, object]]) -> None:
    from tests.service.conftest import serve_in_process

    async with serve_in_process(settings(max_uploads=1, source_timeout_s=5)) as (_, client):
        slow = asyncio.create_task(post_url(client, origin.url("/slow")))
        await asyncio.sleep(0.5)
        samples = parse_metrics((await client.get("/metrics")).text)
        assert samples[("imdn_uploads_in_progress", ())] == 1
        assert samples[("imdn_requests_in_flight", ())] == 0  # no slot, no queue place while fetching
        assert_problem(await post_url(client, origin.url("/cat.png")), 429)  # IMDN_MAX_UPLOADS=1 is taken
        assert (await slow).status_code == 415  # b"late" as image/png: fetched, then not decodable
