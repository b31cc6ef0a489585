"""A signed <img> link end to end: a real `python -m service` process fetches from a real origin on 127.0.0.1;
the second request is a 304 or a cache hit, and neither runs a network (its /metrics say so)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx

from model.links import signed_link
from tests.live_service import ServiceProcess, scrape
from tests.origin_server import OriginServer

KEY = "process-test-key-0123456789"


def test_signed_link_etag_304_and_cache(launch_service: Callable[..., AbstractContextManager[ServiceProcess]],
                                        make_image: Callable[..., bytes],
                                        parse_metrics: Callable[[str], dict[tuple[str, tuple[tuple[str, str], ...]],
                                                                            float]]) -> None:
    env = {"IMDN_MODELS": "x2", "IMDN_BACKEND": "torch", "IMDN_CONTENT": "clean", "IMDN_SOURCE_ALLOW": "127.0.0.1",
           "IMDN_URL_KEYS": KEY, "IMDN_RESULT_CACHE_MB": "4", "IMDN_CACHE_MAX_AGE": "600"}
    with OriginServer({"/cat.png": make_image(32, 24)}) as origin, launch_service(env) as service:
        src = signed_link(service.url, origin.url("/cat.png") + "?token=SECRET", KEY, scale=2)

        def calls() -> float:
            samples = parse_metrics(httpx.get(service.url + "/metrics", timeout=10).text)
            return sum(v for (name, _), v in samples.items() if name == "imdn_inference_seconds_count")

        first = httpx.get(src, timeout=60)
        assert first.status_code == 200, first.text
        assert first.headers["cache-control"] == "public, max-age=600"
        assert first.headers["x-cache"] == "miss"
        ran = calls()
        assert ran > 0
        revalidated = httpx.get(src, headers={"If-None-Match": first.headers["etag"]}, timeout=60)
        assert revalidated.status_code == 304
        hit = httpx.get(src, timeout=60)
        assert hit.status_code == 200 and hit.headers["x-cache"] == "hit" and hit.content == first.content
        assert calls() == ran  # neither the 304 nor the hit ran a network
        samples = scrape(service.url, parse_metrics)
        assert samples[("imdn_result_cache_lookups_total", (("result", "hit"),))] == 1
        assert httpx.get(src.replace("scale=2", "scale=3"), timeout=60).status_code == 403
        assert len(origin.seen) == 3  # one fetch for each request that got past the signature
    assert "SECRET" not in service.output()  # the source's query is never logged
