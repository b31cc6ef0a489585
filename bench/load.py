"""Sustained load (soak) and overload test of the upscale endpoint, on loopback only.

    python bench/load.py --clients 16 --duration 300 --spawn          # start a server, soak it
    python bench/load.py --clients 16 --duration 300 --url http://127.0.0.1:8000 [--pid PID]
    python bench/load.py --overload --spawn                          # offer more than capacity

N concurrent httpx async clients (one connection each) send the same small image (128x128 PNG at x2
by default) back to back for a fixed time, after a warm-up that is not measured. Reported: throughput,
p50/p95/p99 latency, counts by status, and the server's RSS (VmRSS from /proc/<pid>/status) after
warm-up, during (sampled) and at the end, with the drift in percent.

--overload first measures a baseline at capacity (as many clients as the server processes at once),
then offers far more (--clients, default 48) to a server with a small queue (IMDN_QUEUE_SIZE=2 when
spawned): it reports how fast 429s come back and whether the accepted requests kept their latency.
Clients that get 429 wait --retry-pause seconds before trying again (a polite client would honour
Retry-After); every loop is bounded by the duration and --max-requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import ipaddress
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def weights_for(models: list[str], workdir: Path) -> tuple[str, str]:
    """('default', why) when the project's trained weights exist for every model, else random-init ones."""
    from model.weights import DEFAULT_WEIGHTS_DIR, save_weights

    if all((DEFAULT_WEIGHTS_DIR / f"imdn_{m}.safetensors").is_file() for m in models):
        return "default", "the project's trained weights"
    import torch

    from model.imdn import build_model

    directory = workdir / "weights"
    for name in models:
        torch.manual_seed(0)
        save_weights(build_model(name), directory / f"imdn_{name}.safetensors")
    return str(directory), "random-init weights (trained defaults missing; speed is the same)"


@contextlib.contextmanager
def spawn(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, int]]:
    """`python -m service` on 127.0.0.1 -> (url, pid); SIGTERM (then SIGKILL) on the way out."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("IMDN_")}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), environ.get("PYTHONPATH", "")) if p)
    environ.update(env)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=log_path.parent, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited ({proc.returncode}): see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server was not ready in 180 s: see {log_path}")
                time.sleep(0.3)
            yield url, proc.pid
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """user+system CPU seconds of a process so far (/proc/<pid>/stat), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"refusing to load {host!r}: this tool only targets loopback (127.0.0.0/8, ::1, localhost)")


# --- the clients --------------------------------------------------------------------------------


def make_image(side: int) -> bytes:
    """A smooth, natural-ish side x side RGB PNG (deterministic)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    planes = [128 + 60 * np.sin(0.07 * y + 0.05 * x + p) + 40 * (x - y) / side for p in (0.0, 2.0, 4.0)]
    array = np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # by status ('200', '429', 'error:...')
    started: float = 0.0
    ended: float = 0.0
    server_cpu_s: float | None = None
    client_cpu_s: float = 0.0

    def add(self, status: str, seconds: float) -> None:
        self.latencies.setdefault(status, []).append(seconds)

    @property
    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in sorted(self.latencies.items())}

    def summary(self) -> dict[str, object]:
        elapsed = max(1e-9, self.ended - self.started)
        total = sum(self.counts.values())
        out: dict[str, object] = {
            "seconds": round(elapsed, 1), "requests": total, "counts": self.counts,
            "throughput_rps": round(len(self.latencies.get("200", [])) / elapsed, 2),
            "offered_rps": round(total / elapsed, 2),
            # The load generator shares the machine with the server: how much CPU each used.
            "server_cpu_percent": None if self.server_cpu_s is None else round(100 * self.server_cpu_s / elapsed),
            "client_cpu_percent": round(100 * self.client_cpu_s / elapsed),
        }
        for status, values in sorted(self.latencies.items()):
            out[f"latency_{status}_ms"] = percentiles(values)
        return out


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = np.sort(np.asarray(values)) * 1000
    return {"p50": round(float(np.percentile(ordered, 50)), 1), "p95": round(float(np.percentile(ordered, 95)), 1),
            "p99": round(float(np.percentile(ordered, 99)), 1), "max": round(float(ordered[-1]), 1),
            "mean": round(float(statistics.fmean(ordered)), 1)}


async def client_loop(url: str, data: bytes, deadline: float, results: Results | None, budget: list[int],
                      retry_pause: float, timeout: float) -> None:
    """One client, one connection, back-to-back requests until the deadline (or the shared budget runs out)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            try:
                response = await client.post(url, content=data, headers={"content-type": "image/png"})
                await response.aread()
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = f"error:{type(exc).__name__}"
            elapsed = time.perf_counter() - started
            if results is not None:
                results.add(status, elapsed)
            if status != "200":
                await asyncio.sleep(retry_pause if status in ("429", "503") else 0.2)


async def run_phase(url: str, data: bytes, clients: int, seconds: float, pid: int | None, max_requests: int,
                    retry_pause: float, timeout: float, rss_every: float = 5.0, measure: bool = True,
                    label: str = "") -> tuple[Results, list[tuple[float, int]]]:
    results = Results()
    samples: list[tuple[float, int]] = []
    budget = [max_requests]
    server_cpu, client_cpu = cpu_seconds(pid), own_cpu_seconds()
    results.started = time.monotonic()
    deadline = results.started + seconds
    tasks = [asyncio.create_task(client_loop(url, data, deadline, results if measure else None, budget,
                                             retry_pause, timeout)) for _ in range(clients)]
    next_report = results.started + 30
    next_sample = results.started
    value = None
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.25)
        now = time.monotonic()
        if now >= next_sample:
            value = rss_kb(pid)
            if value is not None:
                samples.append((round(now - results.started, 1), value))
            next_sample = now + rss_every
        if measure and now >= next_report:
            done = len(results.latencies.get("200", []))
            print(f"  {label}{now - results.started:5.0f} s: {done} ok, {done / (now - results.started):.2f} req/s"
                  + (f", RSS {value / 1024:.0f} MiB" if value else ""), flush=True)
            next_report += 30
        if now > deadline + timeout + 5:  # a request stuck past its own timeout: give up on it
            for task in tasks:
                task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.ended = time.monotonic()
    server_end = cpu_seconds(pid)
    results.server_cpu_s = None if server_cpu is None or server_end is None else server_end - server_cpu
    results.client_cpu_s = own_cpu_seconds() - client_cpu
    return results, samples


# --- the two modes --------------------------------------------------------------------------------


def soak(args: argparse.Namespace, url: str, pid: int | None, data: bytes) -> dict[str, object]:
    endpoint = f"{url}/v1/superresolve?scale={args.scale:g}"
    print(f"warm-up: {args.clients} clients for {args.warmup:g} s", flush=True)
    asyncio.run(run_phase(endpoint, data, args.clients, args.warmup, pid, args.max_requests, args.retry_pause,
                          args.timeout, measure=False))
    rss_start = rss_kb(pid)
    print(f"measuring: {args.clients} clients for {args.duration:g} s", flush=True)
    results, samples = asyncio.run(run_phase(endpoint, data, args.clients, args.duration, pid, args.max_requests,
                                             args.retry_pause, args.timeout))
    rss_end = rss_kb(pid)
    report: dict[str, object] = {"mode": "soak", "clients": args.clients, **results.summary()}
    if rss_start and rss_end:
        values = [v for _, v in samples]
        report["rss_mib"] = {
            "start": round(rss_start / 1024, 1), "end": round(rss_end / 1024, 1),
            "during_min": round(min(values) / 1024, 1), "during_max": round(max(values) / 1024, 1),
            "drift_percent": round(100 * (rss_end - rss_start) / rss_start, 2),
            "samples": [(t, round(v / 1024, 1)) for t, v in samples[:: max(1, len(samples) // 12)]],
        }
    return report


def overload(args: argparse.Namespace, url: str, pid: int | None, data: bytes) -> dict[str, object]:
    endpoint = f"{url}/v1/superresolve?scale={args.scale:g}"
    capacity = args.capacity
    print(f"warm-up: {capacity} clients for {args.warmup:g} s", flush=True)
    asyncio.run(run_phase(endpoint, data, capacity, args.warmup, pid, args.max_requests, args.retry_pause,
                          args.timeout, measure=False))
    print(f"baseline: {capacity} clients (the server's concurrency) for {args.duration:g} s", flush=True)
    baseline, _ = asyncio.run(run_phase(endpoint, data, capacity, args.duration, pid, args.max_requests,
                                        args.retry_pause, args.timeout, label="baseline "))
    print(f"overload: {args.clients} clients for {args.duration:g} s", flush=True)
    loaded, samples = asyncio.run(run_phase(endpoint, data, args.clients, args.duration, pid, args.max_requests,
                                            args.retry_pause, args.timeout, label="overload "))
    base = baseline.summary()
    over = loaded.summary()
    ok_base = percentiles(baseline.latencies.get("200", []))
    ok_over = percentiles(loaded.latencies.get("200", []))
    report: dict[str, object] = {
        "mode": "overload", "capacity_clients": capacity, "overload_clients": args.clients,
        "baseline": base, "overload": over,
        "rejected_fraction": round(len(loaded.latencies.get("429", [])) / max(1, loaded_total(loaded)), 3),
        "p50_ratio_accepted": round(ok_over.get("p50", 0) / ok_base["p50"], 2) if ok_base else None,
        "p95_ratio_accepted": round(ok_over.get("p95", 0) / ok_base["p95"], 2) if ok_base else None,
    }
    if samples:
        report["rss_mib_max"] = round(max(v for _, v in samples) / 1024, 1)
    return report


def loaded_total(results: Results) -> int:
    return sum(results.counts.values())


def print_report(report: dict[str, object]) -> None:
    print(json.dumps(report, indent=2))
    if report["mode"] == "soak":
        lat = report.get("latency_200_ms")
        lat = lat if isinstance(lat, dict) else {}
        print(f"\nthroughput {report['throughput_rps']} req/s; latency p50 {lat.get('p50')} ms, p95 {lat.get('p95')} "
              f"ms, p99 {lat.get('p99')} ms; statuses {report['counts']}")
        rss = report.get("rss_mib")
        if isinstance(rss, dict):
            print(f"RSS {rss['start']} MiB after warm-up -> {rss['end']} MiB at the end "
                  f"(during {rss['during_min']}-{rss['during_max']} MiB), drift {rss['drift_percent']:+.2f}%")
    else:
        over = report["overload"]
        assert isinstance(over, dict)
        print(f"\n429s: {over['counts'].get('429', 0)}, answered in {over.get('latency_429_ms', {})} ms; accepted "
              f"p50/p95 {report['p50_ratio_accepted']}x/{report['p95_ratio_accepted']}x the at-capacity baseline")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    target.add_argument("--spawn", action="store_true", help="start `python -m service` on 127.0.0.1")
    parser.add_argument("--pid", type=int, help="the --url server's pid, for RSS (spawned: known)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 16; 48 with --overload)")
    parser.add_argument("--duration", type=float, default=300, help="measured seconds (per phase with --overload)")
    parser.add_argument("--warmup", type=float, default=10, help="unmeasured seconds first")
    parser.add_argument("--size", type=int, default=128, help="side of the square test image")
    parser.add_argument("--scale", type=float, default=2)
    parser.add_argument("--overload", action="store_true", help="offer more than capacity (see above)")
    parser.add_argument("--capacity", type=int, default=2, help="--overload baseline clients (= IMDN_MAX_CONCURRENT)")
    parser.add_argument("--queue-size", type=int, default=2, help="IMDN_QUEUE_SIZE for a spawned --overload server")
    parser.add_argument("--threads", type=int, default=1, help="IMDN_THREADS for a spawned server")
    parser.add_argument("--backend", default="auto", help="IMDN_BACKEND for a spawned server (auto, torch, onnx)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="hard cap on requests per phase")
    parser.add_argument("--retry-pause", type=float, default=0.1, help="seconds a client waits after a 429/503")
    parser.add_argument("--timeout", type=float, default=60, help="per-request timeout in seconds")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    args.clients = args.clients or (48 if args.overload else 16)
    if args.url:
        require_loopback(args.url)
    data = make_image(args.size)
    with tempfile.TemporaryDirectory(prefix="imdn-load-") as scratch:
        workdir = Path(scratch)
        if args.spawn:
            models = ["x2"] if args.scale == 2 else ["x2", "x3", "x4", "as"]
            weights, why = weights_for(models, workdir)
            env = {"IMDN_WEIGHTS": weights, "IMDN_MODELS": ",".join(models), "IMDN_THREADS": str(args.threads),
                   "IMDN_BACKEND": args.backend, "IMDN_LOG_LEVEL": "warning",
                   "IMDN_MAX_CONCURRENT": str(args.capacity),
                   "IMDN_QUEUE_SIZE": str(args.queue_size if args.overload else max(8, args.clients))}
            print(f"spawning the service ({why}; {', '.join(f'{k}={v}' for k, v in env.items())})", flush=True)
            with spawn(env, workdir / "server.log") as (url, pid):
                report = overload(args, url, pid, data) if args.overload else soak(args, url, pid, data)
                report["server"] = {k: v for k, v in env.items() if k != "IMDN_WEIGHTS"} | {"weights": why}
        else:
            report = overload(args, args.url, args.pid, data) if args.overload else soak(args, args.url, args.pid,
                                                                                           data)
    report["image"] = f"{args.size}x{args.size} PNG, x{args.scale:g}"
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
