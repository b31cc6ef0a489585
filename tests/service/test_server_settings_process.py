"""Settings for running behind a load balancer, on real processes: keep-alive, a separate metrics port,
the /docs switch."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest

from tests.live_service import ServiceProcess, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
StartService = Callable[..., AbstractContextManager[ServiceProcess]]
LIGHT = {"IMDN_MODELS": "x2", "IMDN_BACKEND": "torch"}
# Longer than uvicorn's default (5 s) and than many clients' idle pools; shorter than common LB idle timeouts.
IDLE_S = 20


def exchange(sock: socket.socket, path: str) -> bytes:
    """One HTTP/1.1 request on an open connection -> the response head and body (small responses only)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data  # the server closed the connection
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def internal_split(launch_service: StartService) -> Iterator[tuple[ServiceProcess, int]]:
    """Metrics on their own port and no /docs, as for a public API port."""
    port = free_port()
    with launch_service({**LIGHT, "IMDN_METRICS_PORT": str(port), "IMDN_DOCS": "false"}) as service:
        yield service, port


def test_idle_connection_is_reused_after_20_s(internal_split: tuple[ServiceProcess, int]) -> None:
    """A load balancer keeps idle upstream connections for 60 s or more; the server must not close them first."""
    service, _ = internal_split
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        assert exchange(sock, "/healthz").startswith(b"HTTP/1.1 200")
        time.sleep(IDLE_S)
        again = exchange(sock, "/healthz")
        assert again.startswith(b"HTTP/1.1 200"), f"connection closed after {IDLE_S} s idle: {again!r}"


def test_metrics_on_their_own_port(internal_split: tuple[ServiceProcess, int],
                                   parse_metrics: Callable[[str], Samples]) -> None:
    service, port = internal_split
    assert httpx.get(service.url + "/metrics", timeout=5).status_code == 404
    samples = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    assert samples[("imdn_ready", ())] == 1
    assert any(name == "imdn_http_requests_total" for name, _ in samples)


def test_docs_switched_off(internal_split: tuple[ServiceProcess, int]) -> None:
    service, _ = internal_split
    for path in ("/docs", "/openapi.json", "/redoc", "/docs/assets/swagger-ui-bundle.js"):
        assert httpx.get(service.url + path, timeout=5).status_code == 404, path
    assert httpx.get(service.url + "/readyz", timeout=5).status_code == 200


def test_workers_metrics_port_sums_all_workers(launch_service: StartService, make_image: Callable[..., bytes],
                                               parse_metrics: Callable[[str], Samples]) -> None:
    """With IMDN_WORKERS the supervisor serves the metrics port, from every worker's files."""
    port = free_port()
    with launch_service({**LIGHT, "IMDN_WORKERS": "2", "IMDN_METRICS_PORT": str(port)}) as service:
        image = make_image(16, 16)
        for _ in range(6):
            response = httpx.post(service.url + "/v1/superresolve", content=image,
                                  headers={"Content-Type": "image/png"}, timeout=60)
            assert response.status_code == 200
        assert httpx.get(service.url + "/metrics", timeout=5).status_code == 404
        samples = parse_metrics(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        served = sum(v for (name, labels), v in samples.items() if name == "imdn_http_requests_total"
                     and ("route", "/v1/superresolve") in labels and ("status", "200") in labels)
        assert served == 6
        assert samples[("imdn_ready", ())] == 1
