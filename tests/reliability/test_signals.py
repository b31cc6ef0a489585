"""Signals (issue 30, item 6), on real processes: SIGHUP drains like SIGTERM (it used to kill a single
process mid-request, exit 129 with no log line, and the IMDN_WORKERS supervisor, leaving its workers serving
unsupervised on the port and the metrics directory behind); a supervisor killed outright (SIGKILL) takes its
workers with it, so the port is free and the metrics directory gone.

Every wait is generous (a loaded 2-core machine); workers that outlive a failed test are killed at its end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.live_service import wait_for
from tests.reliability.reliability_support import RealServer, encode, noise

URL = "/v1/superresolve"
PNG = {"content-type": "image/png"}
SLOW_S = 300  # the slow request's client timeout and the drain deadline: never what ends it
EXIT_S = 90  # how long a process may take to drain and exit when nothing is in flight
COMMON = {"IMDN_MODELS": "x2", "IMDN_MEMORY_BUDGET_MB": "48"}


def in_flight(server: RealServer) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("imdn_requests_in_flight"))


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped (an orphan's exit is reaped by init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def port_free(port: int) -> bool:
    """Could a restarted service listen here? (The supervisor binds the same way: SO_REUSEADDR, then listen.)"""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def workers_of(server: RealServer) -> list[int]:
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    # Spawned workers run multiprocessing's spawn_main (the resource tracker is another child).
    return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]


def metrics_dir_of(pid: int) -> Path:
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    return Path(environ["PROMETHEUS_MULTIPROC_DIR"])


@contextlib.contextmanager
def two_workers(weights_dir: Path, workdir: Path, **env: str) -> Iterator[tuple[RealServer, list[int], Path]]:
    """A supervisor with two ready workers -> (server, worker pids, metrics directory); on the way out every
    process that is left is killed, whatever the test saw."""
    server = RealServer(weights_dir, workdir, IMDN_WORKERS="2", **COMMON, **env)
    workers: list[int] = []
    try:
        server.wait_ready()
        workers = workers_of(server)
        assert len(workers) == 2, workers
        yield server, workers, metrics_dir_of(workers[0])
    finally:
        server.stop(signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_sighup_drains_a_single_process(weights_dir: Path, workdir: Path) -> None:
    """SIGHUP while a request runs: not ready at once, the request completes (200, a whole PNG), exit 0,
    and the log says which signal started the drain."""
    image = encode(noise(2560, 192, seed=3))  # ~2 MP out: seconds, even on a fast CPU
    with RealServer(weights_dir, workdir, IMDN_DRAIN_TIMEOUT_S=str(SLOW_S), **COMMON) as server, \
            ThreadPoolExecutor(1) as pool:
        server.wait_ready()
        slow = pool.submit(httpx.post, f"{server.url}{URL}?scale=2", content=image, headers=PNG, timeout=SLOW_S)
        wait_for(lambda: in_flight(server) >= 1, 60, "the request in flight")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "signal SIGHUP: draining" in server.output() or server.proc.poll() is not None, 30,
                 "the drain to start")
        if slow.done() and slow.exception() is None:
            pytest.fail("the request finished before the signal: make it slower")
        try:
            response = slow.result(timeout=SLOW_S)
        except httpx.HTTPError as exc:
            pytest.fail(f"the in-flight request was lost: {exc!r}; exit {server.proc.poll()}\n{server.log_tail()}")
        assert response.status_code == 200, response.text[:300]
        assert response.content.startswith(b"\x89PNG") and response.content.endswith(b"IEND\xaeB`\x82")
        assert server.proc.wait(EXIT_S) == 0, server.log_tail()
        assert "Traceback" not in server.output()


def test_sighup_drains_every_worker_and_the_supervisor(weights_dir: Path, workdir: Path) -> None:
    """IMDN_WORKERS=2: SIGHUP to the supervisor drains both workers; the supervisor waits for them and exits 0,
    so no worker is left on the port, and the metrics directory is removed."""
    with two_workers(weights_dir, workdir) as (server, workers, metrics_dir):
        assert metrics_dir.is_dir()
        server.proc.send_signal(signal.SIGHUP)
        try:
            code = server.proc.wait(EXIT_S)
        finally:
            alive = [pid for pid in workers if not gone(pid)]
        assert code == 0, server.log_tail()
        assert alive == [], f"workers left running after the supervisor exited: {alive}"
        assert "signal SIGHUP: draining 2 workers" in server.output()
        assert not metrics_dir.exists()
        assert port_free(server.port)


def test_workers_exit_when_the_supervisor_is_killed(weights_dir: Path, workdir: Path) -> None:
    """SIGKILL to the supervisor (the OOM killer, kill -9): its workers notice, drain (nothing in flight here)
    and exit, so a restart can listen on the port; the last one removes the metrics directory."""
    with two_workers(weights_dir, workdir, IMDN_DRAIN_TIMEOUT_S="2") as (server, workers, metrics_dir):
        server.proc.kill()
        server.proc.wait(30)
        deadline = time.monotonic() + EXIT_S
        while time.monotonic() < deadline and not all(gone(pid) for pid in workers):
            time.sleep(0.2)
        alive = [pid for pid in workers if not gone(pid)]
        assert alive == [], f"workers still running {EXIT_S} s after their supervisor died: {alive}"
        assert port_free(server.port)
        wait_for(lambda: not metrics_dir.exists(), 30, "the metrics directory to be removed")
        assert "the supervisor (pid" in server.output() and "is gone" in server.output()
