"""Browser-facing security (service/security.py), on real `python -m service` processes over loopback:
security headers on every response, the Origin rule for state-changing requests, ambiguous HTTP framing
sent over raw sockets to both uvicorn parsers, request-id hygiene, the server header, and /v1/models
without file paths."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image, ImageCms
from pydantic import ValidationError

from service.config import Settings
from tests.live_service import ServiceProcess, all_ready, exchange, service_env, wait_for

GOOD_ORIGIN = "https://app.example.com"
EVIL_ORIGIN = "https://evil.example.net"
PNG = {"content-type": "image/png"}
URL = "/v1/superresolve"


@pytest.fixture(scope="module")
def servers(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    """Two processes started side by side: the defaults (httptools parser, no server header) and the h11
    parser with the server header switched on. Both allow one extra origin (CORS)."""
    common = {"IMDN_MODELS": "x2", "IMDN_CORS_ORIGINS": GOOD_ORIGIN, "IMDN_DRAIN_TIMEOUT_S": "2"}
    workdir = tmp_path_factory.mktemp("security")
    started = {
        "httptools": ServiceProcess(workdir, service_env(weights_dir, **common)),
        "h11": ServiceProcess(workdir, service_env(weights_dir, IMDN_HTTP_PARSER="h11", IMDN_SERVER_HEADER="true",
                                                   **common)),
    }
    with all_ready(started):
        yield started


@pytest.fixture(scope="module")
def server(servers: dict[str, ServiceProcess]) -> ServiceProcess:
    """The service as `make serve` runs it: every security setting at its default."""
    return servers["httptools"]


def sha256_source(block: bytes) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(block).digest()).decode()}'"


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        if part.strip():
            name, *sources = part.split()
            parsed[name] = sources
    return parsed


def check_common_headers(response: httpx.Response) -> dict[str, list[str]]:
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("referrer-policy") == "no-referrer", where
    assert response.headers.get("x-frame-options") == "DENY", where
    policy = directives(response.headers.get("content-security-policy", ""))
    assert policy.get("frame-ancestors") == ["'none'"], where
    assert "server" not in response.headers, where
    return policy


# --- headers ------------------------------------------------------------------------------------


def test_every_response_has_the_security_headers(server: ServiceProcess, make_image: Callable[..., bytes]) -> None:
    """Results, errors (problem+json, 404, 405, 401-free probes), metrics and the docs schema: nosniff, a
    Referrer-Policy, X-Frame-Options, and a CSP that allows nothing for data responses."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        responses = [
            client.post(URL + "?scale=2", content=make_image(16, 12), headers=PNG),  # an image result
            client.post(URL + "?format=jpeg", content=make_image(16, 12), headers=PNG),
            client.post(URL, content=b"not an image", headers={"content-type": "text/plain"}),  # 415
            client.post(URL + "?scale=100", content=make_image(16, 12), headers=PNG),  # 400
            client.get("/v1/models"), client.get("/healthz"), client.get("/readyz"), client.get("/metrics"),
            client.get("/openapi.json"), client.get("/no-such-page"), client.put(URL),
            client.options(URL, headers={"origin": GOOD_ORIGIN, "access-control-request-method": "POST"}),
        ]
    statuses = [r.status_code for r in responses]
    assert statuses[:4] == [200, 200, 415, 400] and 404 in statuses and 405 in statuses, statuses
    for response in responses:
        policy = check_common_headers(response)
        assert policy["default-src"] == ["'none'"], response.request.url


def test_page_csp_allows_only_its_own_inline_blocks(server: ServiceProcess) -> None:
    """The page's script and style run by hash: no 'unsafe-inline', nothing from another origin."""
    response = httpx.get(server.url + "/", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = check_common_headers(response)
    scripts = re.findall(rb"<script>(.*?)</script>", response.content, re.DOTALL)
    styles = re.findall(rb"<style>(.*?)</style>", response.content, re.DOTALL)
    assert scripts and styles, "the page has no inline script/style: update this test"
    assert policy["script-src"] == ["'self'", *[sha256_source(s) for s in scripts]]
    assert policy["style-src"] == ["'self'", *[sha256_source(s) for s in styles]]
    assert policy["default-src"] == ["'none'"] and policy["connect-src"] == ["'self'"]
    assert policy["base-uri"] == ["'none'"] and policy["form-action"] == ["'self'"]
    assert not any("unsafe" in source or source == "*" for sources in policy.values() for source in sources)
    assert re.search(rb"\son[a-z]+\s*=", response.content) is None, "inline event handlers need 'unsafe-hashes'"


def test_docs_csp_allows_what_the_docs_page_loads(server: ServiceProcess) -> None:
    """/docs has its own CSP: its inline script by hash, and each script, stylesheet and icon the HTML names
    allowed, all from this service ('self': the assets are served locally, /redoc is not served)."""
    assert httpx.get(server.url + "/redoc", timeout=10).status_code == 404
    for path in ("/docs",):
        response = httpx.get(server.url + path, timeout=10)
        assert response.status_code == 200, path
        policy = check_common_headers(response)
        html = response.content
        for block in re.findall(rb"<script>(.*?)</script>", html, re.DOTALL):
            assert sha256_source(block) in policy["script-src"], path
        loads = {
            "script-src": re.findall(rb'<script[^>]*\ssrc="([^"]+)"', html),
            "style-src": re.findall(rb'<link[^>]*rel="stylesheet"[^>]*href="([^"]+)"', html)
            + re.findall(rb'<link[^>]*href="([^"]+)"[^>]*rel="stylesheet"', html),
            "img-src": re.findall(rb'<link[^>]*rel="[^"]*icon"[^>]*href="([^"]+)"', html),
        }
        assert loads["script-src"], f"{path}: no script found: update this test"
        for directive, urls in loads.items():
            for url in urls:
                parts = urlsplit(url.decode())
                source = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "'self'"
                assert source in policy[directive], f"{path}: {directive} does not allow {url!r}"
        assert not any(s.startswith("http") for sources in policy.values() for s in sources), policy


@pytest.mark.anyio
async def test_frame_ancestors_setting(start_app: Callable[..., Any]) -> None:
    """IMDN_FRAME_ANCESTORS widens who may frame the page; X-Frame-Options follows where it can."""
    for setting, ancestors, xfo in (("self", "'self'", "SAMEORIGIN"),
                                    ("'self' https://portal.example.com", "'self' https://portal.example.com", None)):
        async with start_app(models=["x2"], warmup=False, frame_ancestors=setting) as (_, client):
            for path in ("/", "/healthz"):
                response = await client.get(path)
                assert f"frame-ancestors {ancestors}" in response.headers["content-security-policy"]
                assert response.headers.get("x-frame-options") == xfo
    for bad in ("'none' https://a.example", "x; script-src *", "'unsafe-inline'", ""):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, frame_ancestors=bad)  # type: ignore[call-arg]


def test_server_header_is_a_setting(servers: dict[str, ServiceProcess]) -> None:
    assert "server" not in httpx.get(servers["httptools"].url + "/healthz", timeout=10).headers
    assert httpx.get(servers["h11"].url + "/healthz", timeout=10).headers["server"] == "uvicorn"


def test_models_show_file_names_not_paths(server: ServiceProcess, weights_dir: Path) -> None:
    response = httpx.get(server.url + "/v1/models", timeout=10)
    info = response.json()["models"][0]
    assert info["weights"] == "imdn_x2.safetensors"
    assert info["sha256"] == hashlib.sha256((weights_dir / "imdn_x2.safetensors").read_bytes()).hexdigest()
    assert str(weights_dir) not in response.text and "/tmp" not in response.text


# --- ICC profiles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_only_real_icc_profiles_reach_the_output(server: ServiceProcess, fmt: str) -> None:
    """An upload whose 'ICC profile' is HTML: the result carries no profile and none of those bytes, and
    the log says it was dropped; a real sRGB profile is carried over."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    marker = uuid.uuid4().hex.encode()
    html = b"<html><script>alert('" + marker + b"')</script></html>"
    for profile, kept in ((html, False), (srgb, True)):
        upload = io.BytesIO()
        Image.new("RGB", (16, 12), (200, 30, 30)).save(upload, "PNG", icc_profile=profile)
        response = httpx.post(f"{server.url}{URL}?scale=2&format={fmt}", content=upload.getvalue(), headers=PNG,
                              timeout=60)
        assert response.status_code == 200, response.text[:300]
        result = Image.open(io.BytesIO(response.content))
        assert result.format == fmt.upper() and result.size == (32, 24)
        assert result.info.get("icc_profile") == (srgb if kept else None), fmt
        assert marker not in response.content and b"<script" not in response.content
    assert re.search(rf"dropped an embedded ICC profile that does not parse as ICC \({len(html)} bytes",
                     server.output())


# --- the Origin rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("origin,allowed", [
    (None, True),  # curl, SDKs: no Origin
    ("own", True),  # the service's own page
    (GOOD_ORIGIN, True),  # listed in IMDN_CORS_ORIGINS
    (EVIL_ORIGIN, False),
    ("null", False),  # sandboxed frames, file:// pages
    ("http://127.0.0.1:1", False),  # same host, another port: another origin
    ("http://localhost.evil.example.net", False),
])
def test_origin_rule_for_posts(server: ServiceProcess, make_image: Callable[..., bytes], origin: str | None,
                               allowed: bool) -> None:
    headers = dict(PNG)
    if origin is not None:
        headers["origin"] = server.url if origin == "own" else origin
    response = httpx.post(server.url + URL, content=make_image(16, 12), headers=headers, timeout=60)
    if allowed:
        assert response.status_code == 200, response.text[:300]
        return
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/forbidden-origin") and "IMDN_CORS_ORIGINS" in problem["detail"]
    assert problem["request_id"] == response.headers["x-request-id"]
    check_common_headers(response)
    assert "access-control-allow-origin" not in response.headers
    # Reading is not state-changing: a GET from the same origin still answers (CORS hides it from the page).
    assert httpx.get(server.url + "/v1/models", headers={"origin": headers["origin"]}, timeout=10).status_code == 200


def test_cross_site_form_post_refused_before_any_work(server: ServiceProcess) -> None:
    """A form on another site posting to the service: 403 at once, though the 5 MB body it announces is
    never sent (nothing is read, nothing is queued), and the refusal is logged as a 403."""
    boundary = "----formboundary" + uuid.uuid4().hex
    head = (f"POST {URL}?scale=4 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nOrigin: {EVIL_ORIGIN}\r\n"
            f"Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 5000000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)  # and not one byte of the body
        data = b""
        while not re.search(rb"\r\n\r\n.*\}$", data, re.DOTALL):  # the problem+json has arrived
            chunk = sock.recv(65536)  # a server waiting for the body would time out here
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 403 "), data[:200]
    assert b"forbidden-origin" in data
    assert re.search(r"method=POST path=/v1/superresolve status=403", server.output())


# --- HTTP framing, over raw sockets -------------------------------------------------------------------

HOST = b"Host: 127.0.0.1\r\n"


def smuggling_cases(marker: bytes) -> dict[str, bytes]:
    """Requests whose framing two parsers could read differently, each hiding a second request."""
    hidden = b"GET /" + marker + b" HTTP/1.1\r\n" + HOST + b"\r\n"
    chunked_end = b"0\r\n\r\n"
    post = b"POST /healthz HTTP/1.1\r\n" + HOST
    return {
        "CL+TE": post + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked_end + hidden,
        "TE+CL": post + b"Transfer-Encoding: chunked\r\nContent-Length: " + str(5 + len(hidden)).encode() +
                 b"\r\n\r\n" + chunked_end + hidden,
        "two different CLs": post + b"Content-Length: 0\r\nContent-Length: " + str(len(hidden)).encode() +
                             b"\r\n\r\n" + hidden,
        "CL list": post + b"Content-Length: 0, " + str(len(hidden)).encode() + b"\r\n\r\n" + hidden,
        "CL with sign": post + b"Content-Length: +0\r\n\r\n" + hidden,
        "CL negative": post + b"Content-Length: -1\r\n\r\n" + hidden,
        "CL not a number": post + b"Content-Length: 0x10\r\n\r\n" + hidden,
        "TE gzip, chunked": post + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked_end + hidden,
        "TE twice": post + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n" + chunked_end
                    + hidden,
        "TE unknown + CL": post + b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n" + chunked_end + hidden,
        "HTTP/1.0 TE+CL keep-alive": b"POST /healthz HTTP/1.0\r\n" + HOST + b"Connection: keep-alive\r\n"
                                     b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n" + chunked_end + hidden,
    }


def status_lines(data: bytes) -> list[bytes]:
    return re.findall(rb"(?m)^HTTP/1\.[01] \d{3}[^\r\n]*", data)


@pytest.mark.parametrize("case", list(smuggling_cases(b"x")))
@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_ambiguous_framing_refused_and_closed(servers: dict[str, ServiceProcess], parser: str, case: str) -> None:
    """One 400 and the connection closed: the request hidden in the body is never served."""
    server = servers[parser]
    marker = f"smuggled-{uuid.uuid4().hex}".encode()
    data, closed = exchange(server.port, smuggling_cases(marker)[case])
    lines = status_lines(data)
    assert len(lines) == 1 and lines[0].startswith(b"HTTP/1.1 400"), (parser, case, data[:600])
    assert closed, f"{parser}, {case}: the connection was kept open after {lines[0]!r}"
    assert marker.decode() not in server.output(), f"{parser}, {case}: the hidden request was served"


def test_default_parser_refuses_repeated_content_length(server: ServiceProcess) -> None:
    """Two equal Content-Lengths: the default parser refuses them too (h11 may read them as one, which
    RFC 9110 8.6 allows: both readings agree, so nothing can hide)."""
    raw = b"POST /healthz HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\nContent-Length: 0\r\n\r\n"
    data, closed = exchange(server.port, raw)
    assert status_lines(data) == [status_lines(data)[0]] and data.startswith(b"HTTP/1.1 400") and closed


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_plain_framing_still_served(servers: dict[str, ServiceProcess], parser: str,
                                    make_image: Callable[..., bytes]) -> None:
    """The guard is no broader than it should be: a chunked upload, then a pipelined request on the same
    connection, are both served."""
    server = servers[parser]
    image = make_image(16, 12)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(image[i:i + 100]), image[i:i + 100]) for i in range(0, len(image), 100))
    raw = (b"POST " + URL.encode() + b"?scale=2 HTTP/1.1\r\n" + HOST + b"Content-Type: image/png\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
           b"GET /healthz HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
    data, closed = exchange(server.port, raw, idle=30)
    lines = status_lines(data)
    assert [line[:12] for line in lines] == [b"HTTP/1.1 200"] * 2, (parser, lines, data[-300:])
    assert b'{"status":"ok"}' in data and closed


# --- request ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offered,kept", [
    ("trace-42", True),
    (str(uuid.uuid4()), True),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),  # a W3C traceparent
    ("a" * 128, True),
    ("a" * 129, False),
    ("id status=200 path=/admin", False),  # would add fake fields to the text log line
    ('id"quoted', False),
    ("id\tx", False),
    (b"id-\xe9t\xe9", False),  # Latin-1 bytes would come back re-encoded
])
def test_request_id_charset(server: ServiceProcess, offered: str | bytes, kept: bool) -> None:
    response = httpx.get(server.url + "/v1/models", headers={"x-request-id": offered}, timeout=10)
    echoed = response.headers["x-request-id"]
    if kept:
        assert echoed == offered
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", echoed), echoed
        assert echoed.encode() != (offered if isinstance(offered, bytes) else offered.encode())


def test_request_id_cannot_forge_log_fields(server: ServiceProcess) -> None:
    forged = "x user=admin status=200"
    response = httpx.get(server.url + "/v1/models?probe=forge", headers={"x-request-id": forged}, timeout=10)
    generated = response.headers["x-request-id"]

    def logged() -> list[str]:  # the access log line is written just after the response is sent
        return [line for line in server.output().splitlines() if f"request_id={generated}" in line]

    wait_for(lambda: bool(logged()), 10, "the request's access log line")
    line = logged()[0]
    assert "user=admin" not in line and line.count("status=") == 1, line
