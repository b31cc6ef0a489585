"""HTTP routes: parse, call the engine, shape the response."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.engine import Upscaler
from model.imageio import DecodeCancelledError, decode, header_size
from model.plan import DEFAULT_SCALE, Plan, scale_policy
from service.errors import (
    BadRequestError,
    ForbiddenOriginError,
    InsufficientStorageError,
    NotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    RequestTimeoutError,
    UnauthorizedError,
    UnprocessableImageError,
    UnsupportedMediaError,
    problem_responses,
)
from service.favicon import favicon_ico
from service.params import UPSCALE_BODY, UpscaleParams, merge_form_fields, single_values
from service.processing import (
    ClosingStreamingResponse,
    DrainDeadlineError,
    RequestRunner,
    Timings,
    encoded_chunks,
    run_in_thread,
    unless_drain_ends,
    watched,
    while_in_use,
)
from service.security import require_api_key
from service.state import ServiceState, StateDep, part_window
from service.upload import UploadTimeoutError, receive_upload

STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
# The formats' own limits (libwebp: 16383; libjpeg via Pillow: 65500); PNG has none that matters here.
FORMAT_MAX_SIDE = {"webp": 16383, "jpeg": 65500}
# Headers a browser page on another origin may read (CORS exposes none by default).
RESULT_HEADERS = ["X-Request-ID", "X-Model", "X-Scale", "X-Input-Size", "X-Output-Size", "Server-Timing",
                  "X-Frames-Dropped", "X-Alpha-Flattened"]

router = APIRouter()


@router.post(
    "/v1/superresolve",
    summary="Upscale an image",
    description=(
        "Send an image (multipart field `image`, or the raw body with an `image/*` Content-Type) and get it back "
        "upscaled. PNG output is streamed band by band as it is computed. Animated images: the first frame is "
        "used (header `X-Frames-Dropped`). Response headers say what was done: `X-Model`, `X-Scale`, "
        "`X-Input-Size`, `X-Output-Size` (WxH), `X-Request-ID`, and `Server-Timing` (decode, queue, inference, "
        "encode; for a streamed PNG, up to its first band). JPEG output of an image with transparency is "
        "composited onto white and says so in `X-Alpha-Flattened: white`."
    ),
    response_class=Response,
    responses={
        200: {"description": "The upscaled image",
              "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in MEDIA_TYPES.values()}},
        **problem_responses(BadRequestError, UnauthorizedError, ForbiddenOriginError, UploadTimeoutError,
                            PayloadTooLargeError,
                            UnsupportedMediaError, UnprocessableImageError, QueueFullError, NotReadyError,
                            InsufficientStorageError, RequestTimeoutError),
    },
    openapi_extra={"requestBody": UPSCALE_BODY},
    dependencies=[Depends(require_api_key)],
)
async def superresolve(request: Request, params: Annotated[UpscaleParams, Query()], state: StateDep) -> Response:
    single_values(request.query_params.multi_items(), "query parameter")  # FastAPI keeps the last of a repeat
    if not state.is_ready() or state.admission is None or state.pool is None:
        raise NotReadyError("the service is starting or draining; retry shortly", headers={"Retry-After": "5"})
    return await unless_drain_ends(state, _superresolve(request, params, state))


async def _superresolve(request: Request, params: UpscaleParams, state: ServiceState) -> Response:
    settings = state.settings
    admission, pool = state.admission, state.pool
    assert admission is not None and pool is not None
    started = time.perf_counter()
    deadline = time.monotonic() + settings.request_timeout_s
    data, fields = await receive_upload(request, state)
    admission.admit()
    admitted = True
    cancel = threading.Event()

    def still_wanted() -> None:  # called by the decoder before each block it reads
        if cancel.is_set():
            raise DecodeCancelledError("the request ended")
        if time.monotonic() > deadline:
            raise RequestTimeoutError("decoding ran past the request's time limit")

    try:
        params = merge_form_fields(params, fields)
        scale = params.scale if params.scale is not None or params.width or params.height else DEFAULT_SCALE
        # The pool as this request sees it: no more tiles once it is cancelled or past its deadline.
        upscaler = Upscaler(RequestRunner(pool, cancel, deadline), budget_bytes=state.budget_bytes,
                            max_batch=settings.max_batch, max_scale=settings.max_scale, tile_size=settings.tile_size,
                            refine_stats=settings.refine_stats, any_scale=settings.any_scale,
                            available=state.model_names, content=params.content or settings.content,
                            part_window=part_window(state.devices), parts_budget_bytes=state.parts_budget_bytes)

        def checked_plan(size: tuple[int, int]) -> Plan:
            plan = upscaler.plan(size, scale, params.width, params.height, params.model)
            out_h, out_w = plan.out_size
            side_limit = FORMAT_MAX_SIDE.get(params.format)
            if side_limit is not None and max(out_h, out_w) > side_limit:
                raise PayloadTooLargeError(f"{params.format.upper()} images are limited to {side_limit} pixels a "
                                           f"side; the output would be {out_w}x{out_h}: use format=png")
            if out_h * out_w > settings.max_output_pixels:
                raise PayloadTooLargeError(f"the output would be {out_w}x{out_h} = {out_w * out_h:,} pixels; "
                                           f"the limit is {settings.max_output_pixels:,}")
            return plan

        timings = Timings()
        decode_start = time.perf_counter()
        # Every limit the header can decide, before any pixel is decoded.
        plan = checked_plan(await asyncio.to_thread(header_size, data, settings.max_input_pixels,
                                                    settings.max_jpeg_scans, settings.max_frames))
        picture = await watched(request, asyncio.to_thread(decode, data, settings.max_input_pixels,
                                                           settings.max_jpeg_scans, still_wanted, settings.max_frames,
                                                           settings.decode_timeout_s),
                                cancel, "while its image was decoded")
        del data
        timings.decode = time.perf_counter() - decode_start
        if picture.size != plan.in_size:  # an orientation the header did not show
            plan = checked_plan(picture.size)
        out_h, out_w = plan.out_size
        queue_start = time.perf_counter()
        await admission.slot(max(0.0, deadline - time.monotonic()))
        timings.queue = time.perf_counter() - queue_start
        state.metrics.queue_wait.observe(timings.queue)
    except BaseException:
        cancel.set()
        admission.leave()
        raise

    chunks = run_in_thread(while_in_use(pool, encoded_chunks(upscaler, picture, plan, params.format, params.quality,
                                                             settings.png_compress_level, timings, cancel,
                                                             settings.stream_heartbeat_s)), cancel)

    def finish() -> None:
        nonlocal admitted
        if admitted:
            admitted = False
            admission.release_slot()
            admission.leave()

    try:
        first = await watched(request, chunks.__anext__(), cancel, "before the first byte")
    except BaseException:
        finish()
        await chunks.aclose()
        raise
    model_names = plan.label
    request.state.log_extra = {
        "model": model_names, "in": f"{picture.size[1]}x{picture.size[0]}", "out": f"{out_w}x{out_h}",
        "format": params.format,
    }
    headers = {
        "X-Model": model_names,
        "X-Scale": f"{plan.scale[1]:.4g}x{plan.scale[0]:.4g}",
        "X-Input-Size": f"{picture.size[1]}x{picture.size[0]}",
        "X-Output-Size": f"{out_w}x{out_h}",
        "Server-Timing": timings.server_timing(),
        "Content-Disposition": f'inline; filename="upscaled.{params.format}"',
        "Cache-Control": "no-store",
    }
    if picture.frames > 1:
        headers["X-Frames-Dropped"] = str(picture.frames - 1)
    if params.format == "jpeg" and picture.alpha is not None:
        headers["X-Alpha-Flattened"] = "white"  # JPEG has no alpha: encode_whole composites onto white

    async def body() -> object:
        try:
            yield first
            while True:
                try:
                    chunk = await unless_drain_ends(state, chunks.__anext__())
                except StopAsyncIteration:
                    break
                except DrainDeadlineError:
                    # Cut: the response never completes, so the connection closes and the client sees a
                    # truncated body, never a short image that looks whole (the access log says "cut").
                    request.scope["state"]["cut"] = "drain"
                    return
                yield chunk
            state.metrics.encode.labels(params.format).observe(timings.encode)
            state.metrics.output_pixels.labels(model_names).inc(out_w * out_h)
            request.state.log_extra.update(inference_s=round(timings.inference, 4), encode_s=round(timings.encode, 4),
                                           decode_s=round(timings.decode, 4), queue_s=round(timings.queue, 4),
                                           total_s=round(time.perf_counter() - started, 4))
        finally:
            finish()
            await chunks.aclose()

    return ClosingStreamingResponse(body(), media_type=MEDIA_TYPES[params.format], headers=headers)  # type: ignore[arg-type]


@router.get("/v1/models", summary="Loaded models, devices and weights",
            dependencies=[Depends(require_api_key)], responses=problem_responses(UnauthorizedError))
async def list_models(state: StateDep) -> dict[str, object]:
    return {
        "models": [vars(info) for info in state.models],
        "devices": state.devices,
        "backend": state.backend,
        "replicas": len(state.pool.replicas) if state.pool else 0,
        "max_scale": state.settings.max_scale,
        "content": state.settings.content,
        "any_scale": state.settings.any_scale,
        "scale_policy": scale_policy(state.settings.any_scale, state.settings.content),
        "limits": {
            "max_upload_bytes": state.settings.max_upload_bytes,
            "max_input_pixels": state.settings.max_input_pixels,
            "max_output_pixels": state.settings.max_output_pixels,
        },
        "ready": state.is_ready(),
    }


@router.get("/healthz", summary="Liveness: the process and its model replicas are alive",
            responses=problem_responses(NotReadyError))
async def healthz(state: StateDep) -> dict[str, str]:
    if state.startup_error:
        raise NotReadyError(state.startup_error)
    if state.pool is not None and not state.pool.alive():
        raise NotReadyError("a model replica has stopped")
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: every model loaded and warm, not draining",
            responses=problem_responses(NotReadyError))
async def readyz(state: StateDep) -> dict[str, str]:
    if state.draining:
        raise NotReadyError("draining: finishing in-flight requests before shutdown")
    if not state.is_ready():
        raise NotReadyError("models are loading or a model replica has stopped")
    if warming := state.workers_warming():
        raise NotReadyError(f"{warming} of {state.settings.workers} worker processes not ready yet")
    return {"status": "ready"}


async def metrics_endpoint(state: StateDep) -> Response:
    """Prometheus metrics (on the API port unless IMDN_METRICS_PORT moves them; added by create_app)."""
    return Response(generate_latest(state.metrics.exposed), media_type=CONTENT_TYPE_LATEST)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(favicon_ico(), media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/", include_in_schema=False, response_model=None)
async def index() -> Response:
    page = STATIC / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html")
    return JSONResponse({"service": "imdn-sr", "docs": "/docs", "endpoint": "POST /v1/superresolve"})
