"""End to end: a real Prometheus scrapes a real service process with the compose scrape config.

Needs the `prometheus` binary (Debian package `prometheus`, listed in .ci/apt-packages.txt).
Everything listens on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO, yaml
from tests.live_service import ServiceProcess, free_port, service_env
from tests.samples import random_weights

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus binary not on PATH (apt-get install prometheus; see .ci/apt-packages.txt)"
)

JOB = "imdn"
SERVICE_READY_TIMEOUT_S = 180  # model load + warm-up on a busy 2-core CI machine
PROMETHEUS_READY_TIMEOUT_S = 30
SERIES_TIMEOUT_S = 60


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll `check` until true; fail early, with the process log, if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{log.read_text()[-4000:]}")
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:.0f} s\n{log.read_text()[-4000:]}")


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    """`python -m service` on a free loopback port, ready to serve; yields its base URL."""
    # One model keeps start-up short; the test only needs scale=2.
    env = {"IMDN_MODELS": "x2", "IMDN_DRAIN_TIMEOUT_S": "2"}
    weights = None
    if not (REPO / "model/weights/imdn_x2.safetensors").is_file():
        weights = random_weights(tmp_path / "weights", ("x2",))
    with ServiceProcess(tmp_path, service_env(weights, **env)) as service:
        service.wait_ready(SERVICE_READY_TIMEOUT_S)
        yield service.url


@pytest.fixture
def prometheus(service: str, tmp_path: Path) -> Iterator[str]:
    """Prometheus with the compose file's `imdn` job, retargeted at the local service; yields its URL."""
    config = yaml.safe_load((REPO / "docker/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    job.update(
        scrape_interval="1s",
        scrape_timeout="1s",
        static_configs=[{"targets": [urllib.parse.urlsplit(service).netloc]}],
    )
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [job]}))
    port = free_port()
    log = tmp_path / "prometheus.log"
    proc = _start(
        [
            PROMETHEUS,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            "prometheus /-/ready", lambda: _get(f"{url}/-/ready")[0] == 200, proc, log, PROMETHEUS_READY_TIMEOUT_S
        )
        yield url
    finally:
        _stop(proc)


def _png(size: int = 24) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (size, size))
    img.putdata([((x * 10) % 256, (y * 10) % 256, (x * y) % 256) for y in range(size) for x in range(size)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _superresolve(url: str, body: bytes) -> None:
    req = urllib.request.Request(
        f"{url}/v1/superresolve?scale=2", data=body, method="POST", headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("image/")
        assert resp.read()


def _query(prometheus: str, expr: str) -> list[dict]:
    status, body = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    if status != 200:
        return []
    return json.loads(body)["data"]["result"]


def test_prometheus_scrapes_service_metrics(service: str, prometheus: str):
    body = _png()
    for _ in range(3):
        _superresolve(service, body)

    wanted = {
        "target up": f'up{{job="{JOB}"}} == 1',
        "request latency histogram": f'imdn_http_request_duration_seconds_bucket{{job="{JOB}"}}',
        "queue depth gauge": f'imdn_queue_depth{{job="{JOB}"}}',
    }
    found: dict[str, list[dict]] = {}
    deadline = time.monotonic() + SERIES_TIMEOUT_S
    while time.monotonic() < deadline and len(found) < len(wanted):
        for name, expr in wanted.items():
            if name not in found and (result := _query(prometheus, expr)):
                found[name] = result
        time.sleep(1)
    missing = sorted(set(wanted) - set(found))
    assert not missing, f"no series in Prometheus within {SERIES_TIMEOUT_S} s for: {missing}"

    # The requests above must show up in the histogram, not just the health probes.
    routes = {s["metric"].get("route", "") for s in found["request latency histogram"]}
    assert any("superresolve" in r for r in routes), routes
