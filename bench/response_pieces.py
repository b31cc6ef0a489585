"""What sending response bodies in 64 KB pieces (the slow-reader check, issue #15) costs a fast client.

    python bench/response_pieces.py [--side 512] [--runs 5]

Two servers in one run, the same weights and settings but IMDN_MIN_CLIENT_RATE (16384: bodies go out in
64 KB pieces, each with a deadline; 0: whole messages, no check). Each serves `--runs` POSTs of a
side x side image at scale=8 with model=x2 (the network at x2, then bicubic: large outputs for little
compute) as stored PNGs, read by a client on loopback; prints the best and median time per request and
the ratio pieces / whole.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service import test_image  # noqa: E402
from tests.live_service import ServiceProcess, service_env  # noqa: E402


def measure(rate: str, data: bytes, runs: int, workdir: Path) -> tuple[list[float], int]:
    env = service_env(None, IMDN_MODELS="x2", IMDN_PNG_COMPRESS_LEVEL="0", IMDN_MIN_CLIENT_RATE=rate)
    with ServiceProcess(workdir, env) as server:
        server.wait_ready()
        times, size = [], 0
        with httpx.Client(timeout=300) as client:
            for i in range(runs + 1):
                started = time.perf_counter()
                response = client.post(f"{server.url}/v1/superresolve?scale=8&model=x2", content=data,
                                       headers={"content-type": "image/png"})
                response.raise_for_status()
                if i:  # the first is a warm-up
                    times.append(time.perf_counter() - started)
                size = len(response.content)
    return times, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    data = test_image(args.side)
    workdir = Path("/tmp/bench-response-pieces")
    results = {}
    for label, rate in (("whole messages (IMDN_MIN_CLIENT_RATE=0)", "0"), ("64 KB pieces (default)", "16384")):
        times, size = measure(rate, data, args.runs, workdir)
        results[label] = times
        print(f"{label:42s} {size / 2**20:7.1f} MB out  best {min(times):.3f} s  median "
              f"{statistics.median(times):.3f} s", flush=True)
    whole, pieces = results.values()
    print(f"pieces / whole: best {min(pieces) / min(whole):.3f}x, median "
          f"{statistics.median(pieces) / statistics.median(whole):.3f}x")


if __name__ == "__main__":
    main()
