"""The service as a real uvicorn process on a loopback port: streaming, readiness, disconnects, SIGTERM drain, curl.

Sizes are chosen for a shared 2-core CPU: tall, narrow images at x2 with a small memory budget
(IMDN_MEMORY_BUDGET_MB=48 -> windows of at most ~134 px a side) give many bands in about a second.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
import pytest
from PIL import Image

from model.backends import TorchRunner, load_models
from model.engine import Upscaler
from model.imageio import decode
from model.weights import DEFAULT_WEIGHTS_DIR
from tests.live_service import Samples, scrape, wait_for

URL = "/v1/superresolve"
PNG = {"Content-Type": "image/png"}


class ServiceProcess(Protocol):
    """What the tests use of conftest.ServiceProcess."""

    url: str

    def output(self) -> str: ...


StartService = Callable[..., AbstractContextManager]
# Many bands, cheaply: small tiles and one statistics window (see the module docstring).
BANDED = {"IMDN_BACKEND": "torch", "IMDN_MEMORY_BUDGET_MB": "48", "IMDN_MODELS": "x2", "IMDN_LOG_FORMAT": "json"}


def total(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


@dataclass
class Streamed:
    status: int
    headers: httpx.Headers
    body: bytes
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (seconds since the request, bytes)


def post_streamed(base: str, data: bytes, query: str = "scale=2", stop_after: int | None = None) -> Streamed:
    """POST and read the body chunk by chunk as it arrives; stop_after=n closes the connection after n chunks."""
    body = bytearray()
    chunks: list[tuple[float, int]] = []
    with httpx.Client(timeout=120) as http:
        started = time.perf_counter()
        with http.stream("POST", f"{base}{URL}?{query}", content=data, headers=PNG) as response:
            for chunk in response.iter_raw():
                chunks.append((time.perf_counter() - started, len(chunk)))
                body += chunk
                if stop_after is not None and len(chunks) >= stop_after:
                    break
    return Streamed(response.status_code, response.headers, bytes(body), chunks)


def png_size(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()  # a truncated stream raises here
    return img.size


# --- streaming and client disconnects, on one shared server ----------------------------------


@pytest.fixture(scope="module")
def banded_service(launch_service: StartService) -> Iterator[ServiceProcess]:
    with launch_service(BANDED) as service:
        yield service


@pytest.fixture
def banded(banded_service: ServiceProcess) -> str:
    return banded_service.url


def test_streaming_process_first_chunk_early(banded: str, make_image: Callable[..., bytes]) -> None:
    """A large PNG is sent chunked, band by band: its first bytes arrive long before its last."""
    result = post_streamed(banded, make_image(64, 1280))
    assert result.status == 200
    assert result.headers["content-type"] == "image/png"
    assert "content-length" not in result.headers
    assert result.headers["transfer-encoding"] == "chunked"
    assert png_size(result.body) == (128, 2560)
    assert result.headers["x-output-size"] == "128x2560"
    first, last = result.chunks[0][0], result.chunks[-1][0]
    assert len(result.chunks) >= 4, result.chunks
    assert first < 0.5 * last, f"first chunk after {first:.3f} s, last after {last:.3f} s: not streamed"


def test_streaming_process_small_image_whole(banded: str, make_image: Callable[..., bytes]) -> None:
    result = post_streamed(banded, make_image(24, 16))
    assert result.status == 200
    assert png_size(result.body) == (48, 32)


def test_disconnect_process_after_first_chunk(banded: str, make_image: Callable[..., bytes],
                                              parse_metrics: Callable[[str], Samples]) -> None:
    """Closing the connection mid-stream drops the remaining tiles and frees the slot; the server serves on."""
    tiles_before = total(scrape(banded, parse_metrics), "imdn_tiles_total")
    partial = post_streamed(banded, make_image(64, 2560), stop_after=1)  # 34 bands of one tile when run to the end
    assert partial.status == 200 and len(partial.chunks) == 1
    wait_for(lambda: scrape(banded, parse_metrics)[("imdn_requests_in_flight", ())] == 0, 15, "in-flight 0")
    time.sleep(0.5)  # a producer that kept going would add tiles meanwhile
    run = total(scrape(banded, parse_metrics), "imdn_tiles_total") - tiles_before
    assert run <= 17, f"{run} tiles ran after the client left: the rest of the job was not cancelled"
    after = post_streamed(banded, make_image(24, 16))
    assert after.status == 200 and png_size(after.body) == (48, 32)


def test_disconnect_process_before_first_byte(banded_service: ServiceProcess, make_image: Callable[..., bytes],
                                              parse_metrics: Callable[[str], Samples]) -> None:
    """A client that gives up before the headers frees its slot too, later bands are not computed,
    and the server takes it calmly: no traceback in its log."""
    banded = banded_service.url
    log_before = len(banded_service.output())
    tiles_before = total(scrape(banded, parse_metrics), "imdn_tiles_total")
    # 3 rows of 7 tiles: the first band takes longer than the client waits.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{banded}{URL}?scale=2", content=make_image(512, 160), headers=PNG,
                   timeout=httpx.Timeout(30, read=0.1))
    wait_for(lambda: scrape(banded, parse_metrics)[("imdn_requests_in_flight", ())] == 0, 30, "in-flight 0")
    time.sleep(0.5)
    run = total(scrape(banded, parse_metrics), "imdn_tiles_total") - tiles_before
    assert run <= 14, f"{run} of 21 tiles ran: the image went on being computed for a client that had left"
    after = post_streamed(banded, make_image(24, 16))
    assert after.status == 200 and png_size(after.body) == (48, 32)
    log = banded_service.output()[log_before:]
    assert "Traceback" not in log and "unhandled error" not in log, log


def test_access_log_process_json_line(banded_service: ServiceProcess, make_image: Callable[..., bytes]) -> None:
    """One structured line per request, with its id, status, sizes and model (IMDN_LOG_FORMAT=json)."""
    response = httpx.post(f"{banded_service.url}{URL}?scale=2", content=make_image(24, 16),
                          headers={**PNG, "X-Request-ID": "log-me-7"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "log-me-7"

    def logged() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in banded_service.output().splitlines() if line.startswith("{")]
        return [entry for entry in lines if entry.get("request_id") == "log-me-7"]

    wait_for(lambda: bool(logged()), 10, "the access log line")
    (entry,) = logged()
    assert entry["status"] == 200
    assert entry["path"] == URL and entry["method"] == "POST"
    assert entry["model"] == "x2" and entry["in"] == "24x16" and entry["out"] == "48x32"
    assert float(entry["duration_s"]) > 0  # type: ignore[arg-type]
    for timing in ("decode_s", "queue_s", "inference_s", "encode_s"):
        assert timing in entry, entry


# --- readiness from process start, and the README's curl examples, on a default server ----------


@dataclass
class Startup:
    url: str
    log: Callable[[], str]
    timeline: list[tuple[float, int | None]]  # (seconds since spawn, /readyz status or None when refused)


@pytest.fixture(scope="module")
def default_server(launch_service: StartService) -> Iterator[Startup]:
    """Default settings (all models, default backend); /readyz polled every 50 ms from the moment of spawn."""
    with launch_service({}, wait=False) as service:
        timeline: list[tuple[float, int | None]] = []
        deadline = time.monotonic() + 120
        while not timeline or timeline[-1][1] != 200:
            assert service.proc.poll() is None, f"service died:\n{service.output()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready in 120 s:\n{service.output()[-3000:]}"
            try:
                status: int | None = httpx.get(service.url + "/readyz", timeout=5).status_code
            except httpx.TransportError:
                status = None
            timeline.append((time.monotonic() - service.started, status))
            time.sleep(0.05)
        for _ in range(5):  # and it stays ready
            timeline.append((time.monotonic() - service.started, httpx.get(service.url + "/readyz").status_code))
        yield Startup(service.url, service.output, timeline)


def test_readyz_process_ready_after_warmup(default_server: Startup) -> None:
    statuses = [status for _, status in default_server.timeline]
    flip = statuses.index(200)
    assert set(statuses[:flip]) <= {None, 503}, default_server.timeline  # refused or not-ready, never 200
    assert set(statuses[flip:]) == {200}
    assert "ready: models x2,x3,x4,as" in default_server.log()
    assert httpx.get(default_server.url + "/healthz").status_code == 200


def test_readyz_process_503_during_warmup(default_server: Startup) -> None:
    statuses = [status for _, status in default_server.timeline]
    assert 503 in statuses[: statuses.index(200)], default_server.timeline


README_CURLS = [  # README.md "Then, from another shell", verbatim
    "curl -sS -F image=@photo.jpg 'http://127.0.0.1:8000/v1/superresolve' -o photo_x2.png",
    "curl -sS --data-binary @photo.png -H 'Content-Type: image/png' "
    "'http://127.0.0.1:8000/v1/superresolve?scale=3.3' -o photo_x3.3.png",
    "curl -sS -F image=@photo.png -F width=1920 -F format=webp 'http://127.0.0.1:8000/v1/superresolve' -o photo.webp",
    "curl -sS -D - -o /dev/null -F image=@photo.png 'http://127.0.0.1:8000/v1/superresolve?scale=4'",
]


def test_curl_readme_examples(default_server: Startup, make_image: Callable[..., bytes], tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    readme = Path(__file__).resolve().parents[2] / "README.md"
    if readme.is_file():
        text = readme.read_text()
        for command in README_CURLS:
            assert command in text, f"README no longer has: {command}"
    # The README's file names; small photos keep CPU time down (width=1920 needs one at least 240 px wide).
    inputs = [("photo.jpg", make_image(120, 90, "JPEG")), ("photo.png", make_image(120, 90)),
              ("photo.png", make_image(480, 360)), ("photo.png", make_image(120, 90))]
    outputs = []
    for command, (name, data) in zip(README_CURLS, inputs, strict=True):
        (tmp_path / name).write_bytes(data)
        done = subprocess.run(command.replace("http://127.0.0.1:8000", default_server.url), shell=True,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0 and not done.stderr, (command, done.returncode, done.stderr)
        outputs.append(done.stdout)

    def size(name: str, fmt: str) -> tuple[int, int]:
        img = Image.open(tmp_path / name)
        assert img.format == fmt, (name, img.format)
        img.load()
        return img.size

    assert size("photo_x2.png", "PNG") == (240, 180)
    assert size("photo_x3.3.png", "PNG") == (396, 297)
    assert size("photo.webp", "WEBP") == (1920, 1440)
    headers = outputs[3].lower()
    assert headers.startswith("http/1.1 200")
    for line in ("x-model: as", "x-scale: 4x4", "x-input-size: 120x90", "x-output-size: 480x360",
                 "content-type: image/png", "server-timing: decode;dur="):
        assert line in headers, (line, headers)


# --- SIGTERM drain ---------------------------------------------------------------------------


@dataclass
class Drain:
    response: httpx.Response
    readyz_while_draining: int | None  # None: connection refused
    readyz_after_exit: int | None
    returncode: int
    log: str


@pytest.fixture(scope="module")
def drained(launch_service: StartService, make_image: Callable[..., bytes],
            parse_metrics: Callable[[str], Samples]) -> Iterator[Drain]:
    """SIGTERM while a slow request is in flight (before its first byte); what the client and the process saw."""
    with launch_service(BANDED) as service, ThreadPoolExecutor(1) as pool:
        url = service.url
        slow = pool.submit(httpx.post, f"{url}{URL}?scale=2", content=make_image(64, 1920), headers=PNG,
                           timeout=60)
        wait_for(lambda: scrape(url, parse_metrics)[("imdn_requests_in_flight", ())] == 1, 30, "request in flight")
        service.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        try:
            readyz_while: int | None = httpx.get(url + "/readyz", timeout=5).status_code
        except httpx.TransportError:
            readyz_while = None
        assert not slow.done(), "the slow request finished before the drain began: make it slower"
        response = slow.result(timeout=60)
        returncode = service.proc.wait(40)
        try:
            readyz_after: int | None = httpx.get(url + "/readyz", timeout=5).status_code
        except httpx.TransportError:
            readyz_after = None
        yield Drain(response, readyz_while, readyz_after, returncode, service.output())


def test_sigterm_drain_in_flight_request_completes(drained: Drain) -> None:
    assert drained.response.status_code == 200, drained.response.text[:300]
    assert png_size(drained.response.content) == (128, 3840)
    assert "draining" in drained.log


def test_sigterm_drain_stops_serving(drained: Drain) -> None:
    """Once SIGTERM arrives no new request is served: not ready (503) or not listening, and gone after exit."""
    assert drained.readyz_while_draining in (None, 503)
    assert drained.readyz_after_exit is None


def test_sigterm_drain_exits_zero(drained: Drain) -> None:
    assert drained.returncode == 0, drained.log[-2000:]


def test_sigterm_drain_exits_by_itself(drained: Drain) -> None:
    """Whatever its status, the process ends on its own after the drain (no SIGKILL needed), not with an error."""
    assert drained.returncode in (0, -signal.SIGTERM), drained.log[-2000:]
    assert "Traceback" not in drained.log


# --- the project's own weights -----------------------------------------------------------------


def test_service_process_default_weights(launch_service: StartService, make_image: Callable[..., bytes]) -> None:
    """`python -m service` with no IMDN_WEIGHTS serves the weights bundled in model/weights/."""
    files = [DEFAULT_WEIGHTS_DIR / f"imdn_{name}.safetensors" for name in ("x2", "x3", "x4", "as")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        pytest.skip(f"default weights not trained yet: {', '.join(missing)} missing in {DEFAULT_WEIGHTS_DIR}")
    with launch_service({}, weights=None) as service:
        models = httpx.get(service.url + "/v1/models", timeout=10).json()["models"]
        assert {m["weights"] for m in models} == {f.name for f in files}
        for query, size in (("scale=2", (64, 48)), ("scale=3", (96, 72)), ("scale=4", (128, 96)),
                            ("scale=2.5", (80, 60))):
            response = httpx.post(f"{service.url}{URL}?{query}", content=make_image(32, 24), headers=PNG, timeout=60)
            assert response.status_code == 200, response.text[:300]
            assert png_size(response.content) == size


# --- IMDN_AS in parts, through the pool of a real process ---------------------------------------


def test_any_scale_in_parts_process(launch_service: StartService, make_image: Callable[..., bytes],
                                    parse_metrics: Callable[[str], Samples], weights_dir: Path) -> None:
    """An 8 MB budget: a 256x256 IMDN_AS output needs 15 MB in one pass, so it runs in parts, planned
    within ONNX Runtime's arena cap of 10 MB (four feature maps of 0.5 MB, the head's output held for
    the tail; of 64 feature rows, bands of 20 for head and tail, 33 for the blocks; within 8 MB the tail
    would recompute the head, with bands of 16 and 27). The PNG is the one-pass result, within 1/255."""
    data = make_image(100, 100, seed=3)
    with launch_service({"IMDN_MEMORY_BUDGET_MB": "8", "IMDN_MODELS": "as", "IMDN_BACKEND": "onnx"}) as service:
        before = scrape(service.url, parse_metrics)
        response = httpx.post(f"{service.url}{URL}?scale=2.56", content=data, headers=PNG, timeout=120)
        after = scrape(service.url, parse_metrics)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["x-model"] == "as" and png_size(response.content) == (256, 256)
    as_calls = ("imdn_inference_seconds_count", (("model", "as"),))
    assert as_calls not in before, "warm-up runs on each replica's backend, outside the inference metrics"
    calls = after[as_calls]
    assert calls == 4 + 6 * 2 + 4, "head, six blocks and tail over their bands, each one call of the pool"
    assert total(after, "imdn_tiles_total") == total(before, "imdn_tiles_total")  # parts are not tiles
    whole = Upscaler(TorchRunner(load_models(["as"], str(weights_dir))), budget_bytes=2**34, content="photo")
    expected = whole.upscale(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), scale=2.56)
    got = np.asarray(decode(response.content).color.permute(1, 2, 0))
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2


# --- no long silence: the PNG's header and keep-alives while IMDN_AS computes its statistics ----------


def idat_payloads(png: bytes) -> list[bytes]:
    """The IDAT chunks' data, in order (CRCs checked by decoding the whole image elsewhere)."""
    pos, found = 8, []
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        if png[pos + 4 : pos + 8] == b"IDAT":
            found.append(png[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return found


def test_slow_first_band_sends_header_and_keep_alives(launch_service: StartService,
                                                     make_image: Callable[..., bytes], weights_dir: Path) -> None:
    """IMDN_AS in parts computes every block's whole-image statistics before its first band (seconds here,
    minutes on big photos). The PNG's header leaves within the heartbeat and keep-alives follow, so no gap
    passes the heartbeat by more than a band's own encoding; the image is the engine's, pixel for pixel."""
    heartbeat = 0.25
    data = make_image(200, 200, seed=4)
    # 600x600 out: one pass would need 86 MB, three feature maps take 8.6 MB: in parts within 16 MB.
    env = {"IMDN_MEMORY_BUDGET_MB": "16", "IMDN_MODELS": "as", "IMDN_BACKEND": "torch",
           "IMDN_STREAM_HEARTBEAT_S": str(heartbeat)}
    with launch_service(env) as service:
        result = post_streamed(service.url, data, "scale=3")
    assert result.status == 200 and result.headers["x-model"] == "as"
    assert png_size(result.body) == (600, 600)
    keep_alives = [p for p in idat_payloads(result.body) if p.endswith(b"\x00\x00\xff\xff") and len(p) <= 16]
    assert keep_alives, "the first band came before any heartbeat: the test needs a slower path"
    first_band = next(t for t, size in result.chunks if size > 64)
    assert result.chunks[0][0] < min(2.0, first_band), "the header did not leave before the first band"
    gaps = [b[0] - a[0] for a, b in zip(result.chunks, result.chunks[1:], strict=False)]
    assert max(gaps) < heartbeat + 1.5, f"a silence of {max(gaps):.2f} s"
    weights = str(weights_dir)
    engine = Upscaler(TorchRunner(load_models(["as"], weights)), budget_bytes=2**34, available=["as"])
    expected = engine.upscale(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), scale=3)
    got = np.asarray(decode(result.body).color.permute(1, 2, 0))
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2  # threads may round differently; no keep-alive does
