"""IMDN_WORKERS: several server processes on one port, as real processes on a loopback port.

Every request below opens a fresh connection, so the kernel hands it to whichever worker accepts
first; the access log's `worker` field says which one answered.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.config import Settings
from service.workers import worker_settings
from tests.live_service import Samples, ServiceProcess, scrape, wait_for

URL = "/v1/superresolve"
PNG = {"Content-Type": "image/png"}
StartService = Callable[..., AbstractContextManager[ServiceProcess]]
TWO_WORKERS = {"IMDN_WORKERS": "2", "IMDN_BACKEND": "torch", "IMDN_MEMORY_BUDGET_MB": "48", "IMDN_MODELS": "x2",
               "IMDN_LOG_FORMAT": "json"}


def access_lines(service: ServiceProcess) -> list[dict[str, object]]:
    lines = []
    for line in service.output().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "service.access":
                lines.append(entry)
    return lines


def served_200(samples: Samples) -> float:
    return sum(value for (name, labels), value in samples.items()
               if name == "imdn_http_requests_total" and dict(labels).get("route") == URL
               and dict(labels).get("status") == "200")


# --- metrics and readiness over two workers ---------------------------------------------------


@dataclass
class Served:
    service: ServiceProcess
    first_ready_log: str  # the service's output when /readyz first answered 200
    requests: int  # upscale requests answered 200
    workers: set[object]  # which workers answered them (access log)


@pytest.fixture(scope="module")
def served(launch_service: StartService, make_image: Callable[..., bytes]) -> Iterator[Served]:
    with launch_service(TWO_WORKERS, wait=False) as service:
        deadline = time.monotonic() + 120
        while True:
            assert service.proc.poll() is None, service.log_tail()
            assert time.monotonic() < deadline, service.log_tail()
            try:
                if httpx.get(service.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        first_ready_log = service.output()
        image = make_image(16, 16)
        sent = 0
        # Fresh connections until both workers have answered (bounded: the kernel's choice is not ours).
        while sent < 8 or (len({e.get("worker") for e in access_lines(service) if e["path"] == URL}) < 2
                           and sent < 60):
            response = httpx.post(f"{service.url}{URL}?scale=2", content=image, headers=PNG, timeout=60)
            assert response.status_code == 200, response.text
            sent += 1
        time.sleep(0.2)  # the access line is written after the last byte
        workers = {e.get("worker") for e in access_lines(service) if e["path"] == URL}
        yield Served(service, first_ready_log, sent, workers)


def test_workers_each_answer_requests(served: Served) -> None:
    assert served.workers == {0, 1}, served.service.log_tail()


def test_workers_metrics_sum_over_all_workers(served: Served, parse_metrics: Callable[[str], Samples]) -> None:
    """Every scrape reports all workers' requests: each worker answered some, so its own count alone is less."""
    per_worker = [e.get("worker") for e in access_lines(served.service) if e["path"] == URL]
    assert len(per_worker) == served.requests
    assert all(0 < per_worker.count(w) < served.requests for w in (0, 1)), per_worker
    for _ in range(12):  # fresh connections: scrapes land on either worker
        samples = scrape(served.service.url, parse_metrics)
        assert served_200(samples) == served.requests
        assert samples[("imdn_requests_in_flight", ())] == 0
        assert samples[("imdn_ready", ())] == 1


def test_workers_ready_only_when_every_worker_is_warm(served: Served) -> None:
    """/readyz first said 200 after both workers had logged that they were ready."""
    ready_lines = [line for line in served.first_ready_log.splitlines() if '"ready: models' in line]
    assert len(ready_lines) == 2, served.first_ready_log[-3000:]


def test_workers_split_the_cpu_threads(served: Served, make_settings: Callable[..., Settings]) -> None:
    assert "2 workers on 127.0.0.1" in served.service.output()
    assert worker_settings(make_settings(workers=4, threads=8)).threads == 2
    assert worker_settings(make_settings(workers=4, threads=2)).threads == 1  # never 0


@pytest.mark.anyio
async def test_readyz_waits_for_the_other_workers(start_app: Callable[..., object]) -> None:
    """One worker warm, the other not: 503 naming how many are missing; 200 once the flag goes up."""
    async with start_app(workers=2) as (app, client):  # type: ignore[attr-defined]
        assert isinstance(app, FastAPI)
        state = app.state.service
        flags = [1, 0]
        state.worker_flags, state.worker_index = flags, 0
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["detail"] == "1 of 2 worker processes not ready yet"
        flags[1] = 1
        assert (await client.get("/readyz")).status_code == 200
        state.start_drain()
        assert flags == [0, 1] and (await client.get("/readyz")).status_code == 503


# --- drain and failure -------------------------------------------------------------------------

SLOW_LIMIT_S = 300  # the drain test's deadline and client timeouts (s)


@dataclass
class Drain:
    responses: list[httpx.Response]
    readyz_while_draining: int | None
    returncode: int
    log: str


@pytest.fixture(scope="module")
def drained(launch_service: StartService, make_image: Callable[..., bytes],
            parse_metrics: Callable[[str], Samples]) -> Iterator[Drain]:
    """SIGTERM to the supervisor while two slow requests run (fresh connections, so maybe on both workers).

    The drain deadline and the client's timeouts are far above the requests' time (~8 s each here, ~3x
    that when both land on one worker): a slow or busy CI machine must not turn a drain into a cut."""
    with launch_service(TWO_WORKERS | {"IMDN_DRAIN_TIMEOUT_S": str(SLOW_LIMIT_S)}) as service, \
            ThreadPoolExecutor(2) as pool:
        url = service.url
        image = make_image(192, 2560)  # ~2 MP out: seconds per request, even on a fast CPU
        slow = [pool.submit(httpx.post, f"{url}{URL}?scale=2", content=image, headers=PNG, timeout=SLOW_LIMIT_S)
                for _ in range(2)]
        wait_for(lambda: scrape(url, parse_metrics)[("imdn_requests_in_flight", ())] >= 2, 30, "requests in flight")
        service.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:
            readyz: int | None = httpx.get(url + "/readyz", timeout=5).status_code
        except httpx.TransportError:
            readyz = None
        assert not any(f.done() for f in slow), "a request finished before the drain began: make it slower"
        try:
            responses = [f.result(timeout=SLOW_LIMIT_S) for f in slow]
        except Exception as exc:  # noqa: BLE001 - a fixture's error shows no service log: quote it
            pytest.fail(f"a slow request failed during the drain: {exc!r}\n{service.log_tail()}")
        returncode = service.proc.wait(60)
        yield Drain(responses, readyz, returncode, service.output())


def test_workers_drain_completes_in_flight_requests(drained: Drain) -> None:
    for response in drained.responses:
        assert response.status_code == 200, response.text[:300]
        assert response.content.startswith(b"\x89PNG") and response.content.endswith(b"IEND\xaeB`\x82")


def test_workers_drain_stops_readiness_and_exits_zero(drained: Drain) -> None:
    assert drained.readyz_while_draining in (None, 503)
    assert drained.returncode == 0, drained.log[-3000:]
    assert "draining 2 workers" in drained.log and drained.log.count("draining (up to") == 2  # and each worker
    assert "Traceback" not in drained.log


def test_workers_a_dead_worker_stops_the_service(launch_service: StartService) -> None:
    """A worker killed from outside: the supervisor drains the other and exits 1, for the orchestrator to restart."""
    with launch_service(TWO_WORKERS) as service:
        children = [int(pid) for pid in Path(f"/proc/{service.pid}/task/{service.pid}/children").read_text().split()]
        # Spawned workers run multiprocessing's spawn_main (the resource tracker is another child).
        workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, children
        os.kill(workers[0], signal.SIGKILL)
        assert service.proc.wait(60) == 1
        assert "stopping the others" in service.output()
