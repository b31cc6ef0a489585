"""HTTP corners (issue 30, item 8), on real uvicorn processes with both parsers (httptools, the default, and
h11): repeated and disagreeing parameters, plain decimal numbers, exactly one Host header, no redirect built
from the Host header, and one whitespace rule for both API-key headers. Raw sockets where the client library
would tidy the request up."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.live_service import all_ready, exchange
from tests.reliability.reliability_support import RealServer, check_error, check_image, encode, noise, raw_http

KEY = "corner-key-7"
AUTH = {"x-api-key": KEY}
IMAGE = encode(noise(12, 16, seed=11))  # 16x12
URL = "/v1/superresolve"
PARSERS = ["httptools", "h11"]


@pytest.fixture(scope="module")
def servers(weights_dir: Path, workdir: Path) -> Iterator[dict[str, RealServer]]:
    """The defaults (httptools) and IMDN_HTTP_PARSER=h11, both with an API key, started side by side."""
    started = {parser: RealServer(weights_dir, workdir, IMDN_MODELS="x2", IMDN_API_KEYS=KEY,
                                  IMDN_HTTP_PARSER=parser) for parser in PARSERS}
    with all_ready(started):
        yield started


@pytest.fixture(params=PARSERS)
def server(request: pytest.FixtureRequest, servers: dict[str, RealServer]) -> RealServer:
    return servers[request.param]


def post(server: RealServer, query: str = "", **kwargs: object) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    if "files" not in kwargs:
        headers.setdefault("content-type", "image/png")
        kwargs.setdefault("content", IMAGE)
    return httpx.post(f"{server.url}{URL}{'?' + query if query else ''}", headers=headers, timeout=60,
                      **kwargs)  # type: ignore[arg-type]


def form(**fields: str | list[str]) -> dict[str, object]:
    return {"files": {"image": ("in.png", IMAGE, "image/png")}, "data": fields}


# --- repeated and disagreeing parameters ---------------------------------------------------------


def test_a_repeated_query_parameter_is_400_naming_it(server: RealServer) -> None:
    """scale=2&scale=3 was served at 3x: one value is never picked over the other."""
    problem = check_error(post(server, "scale=2&scale=3"), {400})
    assert "'scale'" in problem["detail"] and "more than once" in problem["detail"], problem
    problem = check_error(post(server, "format=png&format=webp&scale=2"), {400})
    assert "'format'" in problem["detail"], problem


def test_a_repeated_form_field_is_400_naming_it(server: RealServer) -> None:
    problem = check_error(post(server, **form(scale=["2", "3"])), {400})
    assert "'scale'" in problem["detail"] and "form field" in problem["detail"], problem


def test_query_and_form_must_agree(server: RealServer) -> None:
    """A parameter in both the query and the form: 400 saying which, where the form used to win; the same
    value in both places (2 and 2.0) is one value and is served."""
    problem = check_error(post(server, "scale=3", **form(scale="2")), {400})
    assert problem["detail"].startswith("scale ") and "query" in problem["detail"] and "form" in problem["detail"]
    check_image(post(server, "scale=2", **form(scale="2.0")), (32, 24))
    check_image(post(server, "format=png", **form(scale="2")), (32, 24))  # different parameters: merged


# --- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,value", [("scale", "1_0"), ("scale", "2_0"), ("width", "3_2"), ("scale", " 2"),
                                        ("scale", "\uff12"), ("quality", "9_0"), ("height", "0x18")])
def test_numbers_in_plain_decimal_only(server: RealServer, name: str, value: str) -> None:
    """Python and pydantic read "1_0" as 10 (and " 2" as 2): the service refuses them, naming the parameter,
    as a query parameter and as a form field."""
    problem = check_error(post(server, f"{name}={quote(value)}"), {400})
    assert problem["detail"].startswith(f"{name}:") and "plain decimal" in problem["detail"], problem
    problem = check_error(post(server, **form(**{name: value})), {400})
    assert problem["detail"].startswith(f"{name}:") and "plain decimal" in problem["detail"], problem


@pytest.mark.parametrize("query,size", [("scale=2", (32, 24)), ("scale=2.0", (32, 24)), ("scale=2.", (32, 24)),
                                        ("scale=%2B2", (32, 24)), ("scale=2e0", (32, 24)), ("width=32", (32, 24)),
                                        ("width=32&height=24", (32, 24))])
def test_plain_numbers_still_served(server: RealServer, query: str, size: tuple[int, int]) -> None:
    check_image(post(server, query), size)


# --- Host -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hosts", [[], ["127.0.0.1", "127.0.0.1"], ["127.0.0.1", "evil.example"]],
                         ids=["none", "two same", "two different"])
def test_http11_needs_exactly_one_host(server: RealServer, hosts: list[str]) -> None:
    """RFC 9112 3.2: 400 and the connection closed, on both parsers (httptools served these with 200); the
    request behind it on the same connection is never read."""
    head = b"GET /healthz HTTP/1.1\r\n" + b"".join(f"Host: {h}\r\n".encode() for h in hosts) + b"\r\n"
    data, closed = exchange(server.port, head + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", idle=10)
    assert data.startswith(b"HTTP/1.1 400 "), data[:300]
    assert len(re.findall(rb"(?m)^HTTP/1\.1 \d{3}", data)) == 1 and closed, data[:600]
    if b"application/problem+json" in data:  # ours; h11 answers its own plain-text 400 before the app
        assert b"Host header" in data


def test_one_host_is_served_and_http10_needs_none(server: RealServer) -> None:
    for raw in (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                b"GET /healthz HTTP/1.0\r\n\r\n"):
        data, _ = exchange(server.port, raw, idle=10)
        assert re.match(rb"HTTP/1\.[01] 200 ", data), data[:300]


# --- redirects -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [("POST", "/v1/superresolve/"), ("GET", "/v1/models/"),
                                         ("GET", "/healthz/")])
def test_no_redirect_is_built_from_the_host_header(server: RealServer, method: str, path: str) -> None:
    """A trailing slash was answered 307 to http://<Host>/...: behind a TLS proxy a client would follow it to
    another host with its body and API key. No redirect at all now: 404, no Location."""
    status, headers, body = raw_http(
        server.port, f"{method} {path}?scale=2 HTTP/1.1\r\nHost: evil.example\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(IMAGE)}\r\nConnection: close\r\n\r\n".encode(), [IMAGE])
    assert status == 404 and "location" not in headers, (status, headers)
    assert b"evil.example" not in body


# --- API keys ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padded,accepted", [
    (b"  %s \t" % KEY.encode(), True),  # optional whitespace (RFC 9110 5.6.3): trimmed by both
    (b"%s" % KEY.encode(), True),
    (b"%s\xa0" % KEY.encode(), False),  # a no-break space is not whitespace in HTTP: part of the key
    (b"\xa0%s" % KEY.encode(), False),
])
def test_both_key_headers_trim_the_same_way(server: RealServer, padded: bytes, accepted: bool) -> None:
    """X-API-Key and Authorization: Bearer give the same answer for the same padded key (Bearer used to
    strip() every Unicode space, X-API-Key nothing: httptools keeps trailing spaces)."""
    statuses = []
    for header in (b"X-API-Key: " + padded, b"Authorization: Bearer " + padded, b"Authorization: bearer  " + padded):
        status, _, _ = raw_http(server.port, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header +
                                b"\r\nConnection: close\r\n\r\n")
        statuses.append(status)
    assert statuses == [200 if accepted else 401] * 3, statuses
