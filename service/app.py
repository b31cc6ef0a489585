"""create_app(): settings, lifespan (warm model pool), middleware, error mapping and routes."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.apidocs import install_docs
from service.config import Settings, get_settings
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.pool import ModelPool
from service.routes import RESULT_HEADERS, metrics_endpoint, router
from service.security import RequestGuard, SecurityHeaders
from service.state import Admission, ServiceState, build_pool, check_weights, parse_devices

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")
# A caller's X-Request-ID is kept only if it looks like an id: no spaces, '=', quotes or non-ASCII that
# could forge log fields or come back re-encoded; anything else gets a generated one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+-]{1,128}")


class RequestContextMiddleware:
    """Request id in and out, latency/count metrics, and one log line per request, when its last byte is sent."""

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
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "other")
            elapsed = time.perf_counter() - started
            metrics = self.state.metrics
            metrics.requests.labels(path, scope["method"], str(status)).inc()
            metrics.latency.labels(path, scope["method"]).observe(elapsed)
            if path not in ("/metrics", "/healthz", "/readyz"):
                fields = {"request_id": request_id, "method": scope["method"], "path": scope["path"],
                          "status": status, "duration_s": round(elapsed, 4)}
                if self.state.worker_flags is not None:  # IMDN_WORKERS > 1: which process answered
                    fields["worker"] = self.state.worker_index
                fields.update(scope["state"].get("log_extra", {}))
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.watch_gpus(parse_devices(settings.device))
        state.admission = Admission(settings.concurrency, settings.queue_size, metrics)
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
            # Logged before the flag goes up: with IMDN_WORKERS, /readyz turns 200 after every worker's line.
            log.info("ready: models %s on %s (%s) in %.1f s", ",".join(settings.models), ",".join(state.devices),
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
    app.add_middleware(RequestGuard, allowed_origins=settings.cors_origins)
    app.add_middleware(RequestContextMiddleware, state=state)
    return app
