"""A real `python -m service` process on a free loopback port: the one harness every end-to-end test uses.

The child gets this environment minus the caller's IMDN_* settings (each test states what it
needs), the repository on PYTHONPATH, one CPU thread (the machine is shared with training jobs)
and runs in a scratch folder, so no developer's .env file is read. Its output goes to a log file
that failures quote.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 120.0  # model load + warm-up on a busy 2-core machine
# Parsed /metrics: (sample name, labels) -> value (the parse_metrics fixture's result).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str, parse: Callable[[str], Samples]) -> Samples:
    """One /metrics scrape of the service at `base`, parsed."""
    return parse(httpx.get(base + "/metrics", timeout=10).text)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every 50 ms; fail the test naming `what` if it is not true within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def exchange(port: int, raw: bytes, idle: float = 3.0) -> tuple[bytes, bool]:
    """Send raw bytes on a fresh connection; read until the server closes it (-> closed True) or is silent for
    `idle` seconds (-> False). For requests httpx would refuse to write."""
    with socket.create_connection(("127.0.0.1", port), timeout=idle) as sock:
        sock.sendall(raw)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            pass
        return data, True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(weights: Path | str | None = None, **env: str) -> dict[str, str]:
    """The child's environment (see the module docstring); weights None = the project's default weights."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("IMDN_")}
    child["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child.get("PYTHONPATH", "")) if p)
    child.update(IMDN_THREADS="1", IMDN_DEVICE="cpu", PYTHONUNBUFFERED="1")
    if weights is not None:
        child["IMDN_WEIGHTS"] = str(weights)
    child.update(env)
    return child


class ServiceProcess:
    """`python -m service --host 127.0.0.1 --port <free>` started in `workdir` with environment `env` (and
    `preexec_fn` run in the child before it starts)."""

    def __init__(self, workdir: Path, env: dict[str, str], preexec_fn: Callable[[], None] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"service-{self.port}.log"
        self._sink = self.log.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=workdir, env=env, stdout=self._sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=preexec_fn)  # e.g. resource limits for the child alone

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._sink.closed:
            self._sink.flush()
        return self.log.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Poll /readyz until 200 -> seconds since start; raises with the log if the process dies or hangs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode} before ready:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the service was not ready within {timeout} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process (SIGTERM: drain and exit), kill it if it lingers; -> its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._sink.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


ServerT = TypeVar("ServerT", bound="ServiceProcess")


@contextlib.contextmanager
def all_ready(servers: dict[str, ServerT]) -> Iterator[dict[str, ServerT]]:
    """Servers started side by side (their models load at the same time): wait until each is ready; stop them
    all after, whatever happened."""
    try:
        for server in servers.values():
            server.wait_ready()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@contextlib.contextmanager
def run_service(workdir: Path, env: dict[str, str] | None = None, *, weights: Path | str | None = None,
                wait: bool = True) -> Iterator[ServiceProcess]:
    """Start the service with IMDN_* overrides `env`, wait for /readyz (unless not `wait`), always stop it."""
    with ServiceProcess(workdir, service_env(weights, **(env or {}))) as service:
        if wait:
            service.wait_ready()
        yield service
