"""Service benchmarks (issue 9), each printing ratios measured in the same run.

    python bench/service.py overhead      # end-to-end POST time / engine time (256->x4, 1024->x2)
    python bench/service.py throughput    # 1, 4, 16 concurrent clients vs the engine's single stream
    python bench/service.py ttfb          # time to first byte, longest gap, last byte per path and size
    python bench/service.py memory        # server peak RSS vs output megapixels (1 .. 64 MP)
    python bench/service.py batching      # cross-request batching on/off, 1/8/32 clients, 64x64 -> x2
    python bench/service.py workers       # IMDN_WORKERS 1 vs N: throughput at 1, 4, 16 clients, memory per worker
    python bench/service.py all

A uvicorn process is started on a loopback port with the settings given through
the environment (IMDN_*); --weights picks the weights (default: the project's).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.tuning import set_openmp_wait_policy, tune_malloc  # noqa: E402

set_openmp_wait_policy()  # the engine here runs as the service's does, so before torch loads

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from model.backends import OnnxRunner, TorchRunner, load_models, uses_onnx  # noqa: E402
from model.engine import Upscaler  # noqa: E402
from model.imageio import decode  # noqa: E402
from model.parts import part_window_for  # noqa: E402
from service.config import Settings  # noqa: E402
from service.state import arena_limit, memory_budget, parse_devices, parts_budget, warm_any_scale_parts  # noqa: E402


def test_image(side: int, seed: int = 0) -> bytes:
    """A photo-like PNG: smooth gradients plus texture, so PNG sizes are realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(4 * (x + y))], axis=2) * 0.35 + 0.5
    texture = rng.normal(0, 0.06, (side, side, 3))
    pixels = np.clip((base + texture) * 255, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(weights: str, **env: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    environ = {**os.environ, "IMDN_WEIGHTS": weights, "IMDN_LOG_LEVEL": "warning", **env}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("the service did not become ready")
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def engine(weights: str) -> Upscaler:
    """The engine as the service builds it on this machine: same device, backend, budget and allocator."""
    tune_malloc()
    models = load_models(["x2", "x3", "x4", "as"], weights)
    settings = Settings()
    device = parse_devices(settings.device)[0]
    budget = memory_budget(settings, device)
    if device.type == "cuda":
        runner: TorchRunner | OnnxRunner = TorchRunner(models, device)
    elif uses_onnx(device, settings.backend):  # one replica's arena, capped as the service caps it
        runner = OnnxRunner(models, torch.get_num_threads(), arena_limit_bytes=arena_limit(budget))
    else:
        runner = TorchRunner(models)
    if isinstance(runner, OnnxRunner):
        warm_any_scale_parts(runner)  # as the service's warm-up does: the part graphs made before timing
    return Upscaler(runner, budget_bytes=budget, max_batch=settings.max_batch,
                    refine_stats=settings.refine_stats, any_scale=settings.any_scale, content=settings.content,
                    part_window=part_window_for(device),
                    parts_budget_bytes=parts_budget(budget, [runner]))


def engine_seconds(upscaler: Upscaler, data: bytes, scale: float, rounds: int) -> list[float]:
    picture = decode(data)
    plan = upscaler.plan(picture.size, scale)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _band in upscaler.picture_bands(picture, plan):
            pass
        times.append(time.perf_counter() - start)
    return times


@dataclass
class Timeline:
    """One streamed response as the client saw it: seconds since the request was sent."""

    first: float  # first body byte
    last: float  # last body byte
    longest_gap: float  # the longest silence between body pieces (the first byte's wait not counted)
    size: int


def post(client: httpx.Client, url: str, data: bytes, scale: float, query: str = "") -> Timeline:
    start = time.perf_counter()
    arrivals, size = [], 0
    with client.stream("POST", f"{url}/v1/superresolve?scale={scale}{query}", content=data,
                       headers={"Content-Type": "image/png"}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            arrivals.append(time.perf_counter() - start)
            size += len(chunk)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return Timeline(arrivals[0], time.perf_counter() - start, max(gaps, default=0.0), size)


def histogram_sums(client: httpx.Client, url: str) -> dict[str, float]:
    """The service's own time sums from /metrics: inference (waiting for bands) and PNG encoding."""
    sums = dict.fromkeys(("imdn_inference_seconds", "imdn_encode_seconds"), 0.0)
    for family in text_string_to_metric_families(client.get(f"{url}/metrics").text):
        for sample in family.samples:
            name = sample.name.removesuffix("_sum")
            if sample.name.endswith("_sum") and name in sums:
                sums[name] += sample.value
    return sums


def print_gpu_memory(url: str) -> None:
    """GPU memory of the (one-replica) server from its /metrics; nothing on a CPU server."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("imdn_gpu_memory_"):
                values[sample.name.removeprefix("imdn_gpu_memory_").removesuffix("_bytes")] = sample.value
    if values:
        print("GPU memory, MB: " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in sorted(values.items())))


def overhead(args: argparse.Namespace) -> None:
    upscaler = engine(args.weights)
    print("service overhead: end-to-end POST (decode + queue + inference + PNG encode + HTTP) / engine time;")
    print("the service's own mean inference and encode seconds per request from its /metrics")
    print(f"{'case':<16} {'engine s':>9} {'service s':>10} {'ratio':>6} {'svc infer':>10} {'svc encode':>11}")
    with server(args.weights) as (url, _), httpx.Client(timeout=600) as client:
        for side, scale in (map(int, case.split("x")) for case in args.cases):
            data = test_image(side)
            engine_times, service_times = [], []
            before = histogram_sums(client, url)
            for _ in range(args.rounds):  # interleaved: noise hits both alike
                engine_times += engine_seconds(upscaler, data, scale, 1)
                service_times.append(post(client, url, data, scale).last)
            after = histogram_sums(client, url)
            infer, encode = ((after[k] - before[k]) / args.rounds for k in after)
            e, s = statistics.median(engine_times), statistics.median(service_times)
            print(f"{side}x{side} x{scale:<8g} {e:9.3f} {s:10.3f} {s / e:6.2f} {infer:10.3f} {encode:11.3f}")


async def _clients(n: int, url: str, data: bytes, deadline: float, latencies: list[float],
                   errors: list[int]) -> None:
    await asyncio.gather(*(_client_loop(url, data, deadline, latencies, errors) for _ in range(n)))


async def _client_loop(url: str, data: bytes, deadline: float, latencies: list[float], errors: list[int]) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            response = await client.post(f"{url}/v1/superresolve?scale=2", content=data,
                                         headers={"Content-Type": "image/png"})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors.append(response.status_code)
                await asyncio.sleep(float(response.headers.get("Retry-After", "0.5")))


def throughput(args: argparse.Namespace) -> None:
    data = test_image(args.side)
    upscaler = engine(args.weights)
    single = statistics.median(engine_seconds(upscaler, data, 2, max(3, args.rounds)))
    print(f"throughput: {args.side}x{args.side} -> x2 PNG, {args.duration:g} s per level; "
          f"engine single stream {1 / single:.2f} img/s")
    print(f"{'clients':>7} {'img/s':>7} {'ratio':>6} {'p50 s':>7} {'p95 s':>7} {'non-200':>8}")
    queue = str(max(16, 2 * max(args.clients)))
    with server(args.weights, IMDN_QUEUE_SIZE=queue) as (url, _):
        for clients in args.clients:
            latencies: list[float] = []
            errors: list[int] = []
            deadline = time.monotonic() + args.duration
            start = time.perf_counter()
            asyncio.run(_clients(clients, url, data, deadline, latencies, errors))
            rate = len(latencies) / (time.perf_counter() - start)
            q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
            print(f"{clients:7d} {rate:7.2f} {rate * single:6.2f} {statistics.median(latencies):7.2f} "
                  f"{q[18]:7.2f} {len(errors):8d}")
        print_gpu_memory(url)


# (label, query, scale): the default photo path (IMDN_AS), the clean paths, and an encoded-whole format.
TTFB_PATHS = (("photo (as) png", "", 2), ("clean x2 png", "&content=clean", 2),
              ("clean x3+bic png", "&content=clean", 2.5), ("photo (as) webp", "&format=webp", 2))


def ttfb(args: argparse.Namespace) -> None:
    heartbeat = Settings().stream_heartbeat_s
    print(f"time to first byte, longest gap between body pieces, last byte (s); best of {args.rounds}; "
          f"IMDN_STREAM_HEARTBEAT_S={heartbeat:g}")
    print(f"{'path':<18} {'input':>9} {'output MP':>9} {'first':>7} {'longest gap':>11} {'last':>7}")
    with server(args.weights, IMDN_MAX_UPLOAD_BYTES=str(2**30), IMDN_REQUEST_TIMEOUT_S="3600") as (url, _), \
            httpx.Client(timeout=3600) as client:
        for label, query, scale in TTFB_PATHS:
            for side in args.sides:
                data = test_image(side)
                runs = [post(client, url, data, scale, query) for _ in range(args.rounds)]
                best = min(runs, key=lambda run: run.last)
                out_mp = round(side * scale) ** 2 / 1e6
                print(f"{label:<18} {f'{side}x{side}':>9} {out_mp:9.2f} {best.first:7.2f} {best.longest_gap:11.2f} "
                      f"{best.last:7.2f}", flush=True)


def proc_status_bytes(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (VmHWM: peak resident, VmRSS: resident now) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss(pid: int) -> int:
    return proc_status_bytes(pid, "VmHWM")


def resident(pid: int) -> int:
    return proc_status_bytes(pid, "VmRSS")


def memory(args: argparse.Namespace) -> None:
    for content in args.content:  # one server each: the peak (VmHWM) only ever grows
        path = "IMDN_AS" if content == "photo" else "IMDN x2"
        print(f"server peak RSS (VmHWM) after each request, growing output size: x2 from a square input, "
              f"IMDN_CONTENT={content} ({path})")
        print(f"{'output MP':>9} {'input':>11} {'peak RSS MB':>12} {'seconds':>8}")
        # Big photo-like PNGs pass 32 MB: lift the upload limit for this measurement only.
        with server(args.weights, IMDN_MAX_UPLOAD_BYTES=str(2**30), IMDN_REQUEST_TIMEOUT_S="3600",
                    IMDN_CONTENT=content) as (url, pid), httpx.Client(timeout=3600) as client:
            print(f"{'(idle)':>9} {'':>11} {peak_rss(pid) / 2**20:12.0f}")
            for megapixels in args.megapixels:
                side = int((megapixels * 1e6 / 4) ** 0.5)
                start = time.perf_counter()
                post(client, url, test_image(side), 2)
                print(f"{megapixels:9g} {f'{side}x{side}':>11} {peak_rss(pid) / 2**20:12.0f} "
                      f"{time.perf_counter() - start:8.1f}")
            time.sleep(3)  # idle replicas hand their cached buffers back after a second
            print(f"{'idle after':>9} {'':>11} {resident(pid) / 2**20:12.0f} (resident now, not peak)")


def batching(args: argparse.Namespace) -> None:
    data = test_image(64)
    print("dynamic batching: many small requests (64x64 -> x2), IMDN_MAX_BATCH=1 vs 8 (max wait 2 ms)")
    print(f"{'clients':>7} {'img/s b=1':>10} {'img/s b=8':>10} {'ratio':>6} {'p50 ms b=1':>11} {'p50 ms b=8':>11}")
    results: dict[tuple[int, int], tuple[float, float]] = {}
    for max_batch in (1, 8):
        env = {"IMDN_MAX_BATCH": str(max_batch), "IMDN_MAX_WAIT_MS": "2", "IMDN_QUEUE_SIZE": "64",
               "IMDN_MAX_CONCURRENT": "32"}
        with server(args.weights, **env) as (url, _):
            for clients in args.batch_clients:
                latencies: list[float] = []
                errors: list[int] = []
                start = time.perf_counter()
                asyncio.run(_clients(clients, url, data, time.monotonic() + args.duration, latencies, errors))
                results[(max_batch, clients)] = (len(latencies) / (time.perf_counter() - start),
                                                 statistics.median(latencies) * 1000)
                print(f"  max batch {max_batch}, {clients} clients: {results[(max_batch, clients)][0]:.1f} img/s",
                      flush=True)
            print_gpu_memory(url)
    for clients in args.batch_clients:
        (r1, l1), (r8, l8) = results[(1, clients)], results[(8, clients)]
        print(f"{clients:7d} {r1:10.1f} {r8:10.1f} {r8 / r1:6.2f} {l1:11.1f} {l8:11.1f}")


def worker_pids(pid: int) -> list[int]:
    """The IMDN_WORKERS processes under a server (spawned children), or the server itself when it has none."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    spawned = [int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    return spawned or [pid]


def gpu_memory_by_pid() -> dict[int, int]:
    """nvidia-smi's memory per compute process, MiB ({} without nvidia-smi or a GPU)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(pid): int(mib) for pid, mib in (line.split(",") for line in out.splitlines() if line.strip())}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def workers(args: argparse.Namespace) -> None:
    """All servers run at once and take turns (args.rounds slices per level): background load hits all alike."""
    data = test_image(args.side)
    upscaler = engine(args.weights)
    single = statistics.median(engine_seconds(upscaler, data, 2, max(3, args.rounds)))
    del upscaler
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what this process keeps is not the servers'
    print(f"IMDN_WORKERS: {args.side}x{args.side} -> x2 PNG, {args.duration:g} s per level and server in "
          f"{args.rounds} interleaved slices, {os.cpu_count()} CPUs split between a server's workers; "
          f"engine single stream {1 / single:.2f} img/s")
    print(f"{'workers':>7} {'clients':>7} {'img/s':>7} {'/engine':>7} {'/first':>7} {'p50 s':>7} {'non-200':>8}")
    queue = str(max(16, 2 * max(args.clients)))
    with ExitStack() as stack:
        servers = [stack.enter_context(server(args.weights, IMDN_WORKERS=str(count), IMDN_QUEUE_SIZE=queue))
                   for count in args.workers]
        for clients in args.clients:
            done = [0] * len(servers)
            elapsed = [0.0] * len(servers)
            latencies: list[list[float]] = [[] for _ in servers]
            errors: list[list[int]] = [[] for _ in servers]
            for _ in range(args.rounds):
                for i, (url, _pid) in enumerate(servers):
                    before = len(latencies[i])
                    start = time.perf_counter()
                    asyncio.run(_clients(clients, url, data, time.monotonic() + args.duration / args.rounds,
                                         latencies[i], errors[i]))
                    elapsed[i] += time.perf_counter() - start
                    done[i] += len(latencies[i]) - before
            rates = [n / t for n, t in zip(done, elapsed, strict=True)]
            for count, rate, lat, err in zip(args.workers, rates, latencies, errors, strict=True):
                print(f"{count:7d} {clients:7d} {rate:7.2f} {rate * single:7.2f} {rate / rates[0]:7.2f} "
                      f"{statistics.median(lat):7.2f} {len(err):8d}", flush=True)
        gpu = gpu_memory_by_pid()
        if gpu:
            print(f"GPU memory of all {len(gpu)} processes on the GPU (this one included): {sum(gpu.values())} MiB")
        elif torch.cuda.is_available():  # nvidia-smi sees no PIDs (a container's PID namespace): the device total
            free, total = torch.cuda.mem_get_info()
            print(f"GPU memory in use on the device, all processes: {(total - free) / 2**20:.0f} MiB")
        for count, (_url, pid) in zip(args.workers, servers, strict=True):
            print(f"{count} workers, per worker: " + ", ".join(
                f"RSS {rss_mb(p):.0f} MB" + (f" GPU {gpu[p]} MiB" if p in gpu else "") for p in worker_pids(pid)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["overhead", "throughput", "ttfb", "memory", "batching", "workers", "all"])
    parser.add_argument("--weights", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", type=int, default=256, help="throughput: input side")
    parser.add_argument("--cases", nargs="+", default=["256x4", "1024x2"], help="overhead: SIDExSCALE inputs")
    parser.add_argument("--duration", type=float, default=30, help="throughput: seconds per concurrency level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024, 2048], help="ttfb: input sides")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 16, 36, 64])
    parser.add_argument("--content", nargs="+", choices=["photo", "clean"], default=["photo", "clean"],
                        help="memory: IMDN_CONTENT of each server (photo: x2 runs IMDN_AS; clean: IMDN x2)")
    parser.add_argument("--batch-clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="workers: IMDN_WORKERS values")
    args = parser.parse_args()
    for name, fn in (("overhead", overhead), ("throughput", throughput), ("ttfb", ttfb), ("memory", memory),
                     ("batching", batching), ("workers", workers)):
        if args.what in (name, "all"):
            fn(args)


if __name__ == "__main__":
    main()
