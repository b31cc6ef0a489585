"""Signed GET links: time per request for a cached result, a 304 and an uncached one (docs/urls.md).

    python bench/url_cache.py --side 512 --scale 2 --rounds 10

One service process (IMDN_RESULT_CACHE_MB=256) fetches a PNG from an origin on 127.0.0.1. Uncached: each
request is a new link (another `quality`, which a PNG ignores but the ETag names), so it fetches, decodes,
runs the network and encodes. Cached: the same link again, answered from the result cache (it still fetches
the source, whose bytes the ETag names). 304: the same link with If-None-Match. Interleaved rounds; medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.service import server, test_image  # noqa: E402
from model.links import signed_link  # noqa: E402

KEY = "bench-url-cache-key-0123456789"


def origin(body: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def timed(client: httpx.Client, url: str, headers: dict[str, str] | None = None, expect: int = 200) -> float:
    started = time.perf_counter()
    response = client.get(url, headers=headers)
    elapsed = time.perf_counter() - started
    assert response.status_code == expect, f"{response.status_code}: {response.text[:200]}"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=512, help="source image side in pixels")
    parser.add_argument("--scale", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--weights", default="default")
    args = parser.parse_args()
    image = test_image(args.side)
    httpd = origin(image)
    source = f"http://127.0.0.1:{httpd.server_address[1]}/photo.png"
    env = {"IMDN_SOURCE_ALLOW": "127.0.0.1", "IMDN_URL_KEYS": KEY, "IMDN_RESULT_CACHE_MB": "256"}
    with server(args.weights, **env) as (base, _), httpx.Client(timeout=600) as client:
        cached_link = signed_link(base, source, KEY, scale=args.scale)
        first = client.get(cached_link)
        assert first.status_code == 200 and first.headers["x-cache"] == "miss", first.text[:200]
        tag = first.headers["etag"]
        times: dict[str, list[float]] = {"uncached": [], "cached": [], "304": []}
        for i in range(args.rounds):
            fresh = signed_link(base, source, KEY, scale=args.scale, quality=1 + i % 100)
            times["uncached"].append(timed(client, fresh))
            times["cached"].append(timed(client, cached_link))
            times["304"].append(timed(client, cached_link, {"If-None-Match": tag}, expect=304))
    httpd.shutdown()
    print(f"GET {args.side}x{args.side} PNG ({len(image):,} bytes) x{args.scale:g} -> {len(first.content):,} bytes, "
          f"{args.rounds} rounds, median ms per request")
    uncached = statistics.median(times["uncached"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>9} {median * 1000:9.1f} ms   {uncached / median:7.1f}x faster than uncached")


if __name__ == "__main__":
    main()
