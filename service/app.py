"""create_app(): settings, lifespan (warm model pool), middleware, error mapping and routes."""

from __future__ import annotations

import asyncio
import http
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import Admission, PixelRateLimit, derived_memory_limit
from service.apidocs import install_docs
from service.config import Settings, get_settings
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.pool import ModelPool
from service.results import ResultCache
from service.routes import RESULT_HEADERS, metrics_endpoint, router
from service.security import RequestGuard, SecurityHeaders
from service.sources import SourceFetcher
from service.state import ServiceState, build_pool, check_weights, parse_devices

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")
# A caller's X-Request-ID is kept only if it looks like an id: no spaces, '=', quotes or non-ASCII that
# could forge log fields or come back re-encoded; anything else gets a generated one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+-]{1,128}")


# Metric labels come from fixed sets: h11 accepts any token as a method, and each new label value is a new
# time series (300 invented methods grew /metrics by 550 KB).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
QUIET_ROUTES = ("/metrics", "/healthz", "/readyz")
# Response bodies go out in pieces of this size, each of which the client must take in time.
PIECE_BYTES = 65536


def status_label(status: int) -> str:
    """The status code when it is one HTTP defines, else its class ('5xx'): a bounded set either way."""
    return str(status) if status in HTTP_STATUSES else f"{min(max(status // 100, 1), 5)}xx"


HTTP_STATUSES = frozenset(int(s) for s in http.HTTPStatus) | {499}


class SlowClientError(Exception):
    """A client took the response too slowly: it is cut (`outcome=cut cut_reason=slow_client`)."""


class RequestContextMiddleware:
    """Request id in and out, latency/count metrics, and one log line per request when it ends: its status,
    the bytes received and sent, and, when the response did not complete, why (`outcome`)."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        request_state = scope.setdefault("state", {})
        request_state["request_id"] = request_id
        status = 500
        bytes_in = bytes_out = 0
        started_response = completed = client_gone = False

        async def receive_counted() -> Message:
            nonlocal bytes_in, client_gone
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            elif message["type"] == "http.disconnect":
                client_gone = True
            return message

        settings = self.state.settings
        # A client that reads too slowly would hold its processing slot (the work waits for it), so
        # each piece of the body must be taken in time; only time spent waiting on the client counts.
        piece_wait = max(settings.client_grace_s, PIECE_BYTES / settings.min_client_rate) \
            if settings.min_client_rate else None

        async def send_with_id(message: Message) -> None:
            nonlocal status, bytes_out, started_response, completed
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                more = message.get("more_body", False)
                if not more and request_state.get("cut"):
                    return  # a cut response never completes: the server closes the connection instead
                body = message.get("body", b"")
                if piece_wait is None or client_gone:
                    await send(message)
                    bytes_out += 0 if client_gone else len(body)
                else:
                    # In pieces: the server buffers a whole message at once, and waits (flow control)
                    # only before the next, so a large band would give no measure of the client.
                    pieces = [body[at : at + PIECE_BYTES] for at in range(0, len(body), PIECE_BYTES)] or [b""]
                    for i, piece in enumerate(pieces):
                        part = {"type": "http.response.body", "body": piece,
                                "more_body": more or i < len(pieces) - 1}
                        try:
                            await asyncio.wait_for(send(part), piece_wait)
                        except TimeoutError:
                            request_state["cut"] = "slow_client"
                            raise SlowClientError from None
                        bytes_out += len(piece)
                completed = not more
                return
            await send(message)

        try:
            await self.app(scope, receive_counted, send_with_id)
        except SlowClientError:
            pass  # the response stays incomplete: the server closes the connection (logged below)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "other")
            method = scope["method"] if scope["method"] in METHODS else "other"
            elapsed = time.perf_counter() - started
            metrics = self.state.metrics
            metrics.requests.labels(path, method, status_label(status)).inc()
            metrics.latency.labels(path, method).observe(elapsed)
            outcome = "client_closed" if status == 499 else None
            reason = None
            if started_response and not completed:  # the response was cut short
                reason = "client_closed" if client_gone else request_state.get("cut", "error")
                metrics.cut.labels(reason).inc()
                outcome = "cut"
            if path not in QUIET_ROUTES or outcome:
                fields: dict[str, object] = {"request_id": request_id, "method": scope["method"],
                                             "path": scope["path"], "status": status,
                                             "duration_s": round(elapsed, 4), "bytes_in": bytes_in,
                                             "bytes_out": bytes_out}
                if outcome:  # absent: the response completed
                    fields["outcome"] = outcome  # client_closed (before the response), cut (during it)
                if reason:
                    fields["cut_reason"] = reason  # client_closed, drain, slow_client, error
                if self.state.worker_flags is not None:  # IMDN_WORKERS > 1: which process answered
                    fields["worker"] = self.state.worker_index
                fields.update(request_state.get("log_extra", {}))
                access_log.info("request", extra={"fields": fields})


class ServiceApp(FastAPI):
    """FastAPI with the security headers as its outermost layer: even a 500 from Starlette's error
    middleware, or a CORS preflight answer, carries them."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack(), self.state.service.settings.frame_ancestors)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    state = ServiceState(settings=settings, metrics=metrics)
    if settings.source_allow:
        state.sources = SourceFetcher(settings)
    if settings.result_cache_mb:
        state.results = ResultCache(settings.result_cache_mb * 2**20, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.watch_gpus(parse_devices(settings.device))
        state.loop = asyncio.get_running_loop()
        state.drain_expired = asyncio.Event()
        rate = PixelRateLimit(settings.rate_limit_pixels, settings.rate_limit_window_s) \
            if settings.rate_limit_pixels else None
        state.admission = Admission(settings.concurrency, settings.queue_size, metrics, pixel_rate=rate)
        started = time.perf_counter()
        # Bad weights stop start-up here, before the port opens (uvicorn exits non-zero).
        state.models = await asyncio.to_thread(check_weights, settings)
        # Backends and warm-up take longer: in the background, so /healthz and /readyz (503) answer meanwhile.
        loading = asyncio.create_task(asyncio.to_thread(build_pool, settings, metrics, state))

        def loaded(task: asyncio.Task[ModelPool]) -> None:
            if task.cancelled() or task.exception() is not None:
                state.startup_error = f"model pool failed to start: {task.exception()!r}"
                log.error(state.startup_error)
                if app.state.on_fatal is not None:
                    app.state.on_fatal()
                return
            state.pool = task.result()
            assert state.admission is not None
            state.admission.set_memory_limit(derived_memory_limit(settings, state.activation_bytes))
            # Logged before the flag goes up: with IMDN_WORKERS, /readyz turns 200 after every worker's line.
            log.info("ready: models %s on %s (%s) in %.1f s", ",".join(state.model_names), ",".join(state.devices),
                     state.backend, time.perf_counter() - started)
            state.set_ready(True)

        loading.add_done_callback(loaded)
        try:
            yield
        finally:
            state.set_ready(False)
            if not loading.done():
                await asyncio.wait([loading])
            if state.pool is not None:
                state.pool.close()
            if state.sources is not None:
                await state.sources.aclose()
            if state.admission is not None:
                state.admission.close()

    app = ServiceApp(
        title="IMDN super-resolution",
        version="0.1.0",
        description="Single-image super-resolution with IMDN (Hui et al., ACM MM 2019): any size, any scale, "
        "streamed PNGs. Errors are RFC 9457 problem+json.",
        lifespan=lifespan,
        # IMDN_DOCS=false hides the API description; /docs is served offline below, /redoc not at all.
        openapi_url="/openapi.json" if settings.docs else None,
        docs_url=None,
        redoc_url=None,
        # Starlette would answer /v1/superresolve/ with a 307 to an absolute URL built from the Host header
        # (http://evil.example/... behind a TLS proxy, followed with the body and the API key): no redirects.
        redirect_slashes=False,
    )
    app.state.service = state
    app.state.on_fatal = None  # set by `python -m service` to stop the server if the pool cannot start
    install_error_handlers(app)
    app.include_router(router)
    if settings.docs:
        install_docs(app)
    if not settings.metrics_port:  # else served on its own port by `python -m service`
        app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], summary="Prometheus metrics",
                          response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=RESULT_HEADERS, max_age=600)
    app.add_middleware(RequestGuard, allowed_origins=settings.cors_origins, max_headers=settings.max_headers,
                       max_header_bytes=settings.max_header_bytes)
    app.add_middleware(RequestContextMiddleware, state=state)
    return app
