"""HTTP routes: parse, call the engine, shape the response."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.animation import ANIMATION_OUTPUTS, check_output_pixels, read_header
from model.engine import Upscaler
from model.imageio import DecodeCancelledError, decode
from model.memory import animation_bytes, request_bytes
from model.metadata import metadata_for_output
from model.plan import DEFAULT_SCALE, Plan, scale_policy
from service.admission import client_of
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
from service.links import LinkParams, LinkSignatureError, check_link
from service.params import UPSCALE_BODY, UpscaleParams, merge_form_fields, single_values
from service.processing import (
    ClosingStreamingResponse,
    DrainDeadlineError,
    RequestRunner,
    Timings,
    animation_chunks,
    encoded_chunks,
    run_in_thread,
    unless_drain_ends,
    watched,
    while_in_use,
)
from service.results import ResultRecorder, cache_control, early_answer, result_tag
from service.security import require_api_key
from service.sources import SourceFailedError, SourceForbiddenError, SourceTimeoutError, fetch_source
from service.state import ServiceState, StateDep, part_window
from service.upload import UploadTimeoutError, receive_upload

STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg", "avif": "image/avif",
               "gif": "image/gif"}
# The formats' own limits (libwebp: 16383; libjpeg via Pillow: 65500; libavif's decoders refuse wider than
# 32768 by default; GIF: 16 bits); PNG has none that matters here.
FORMAT_MAX_SIDE = {"webp": 16383, "jpeg": 65500, "avif": 32768, "gif": 65535}
# Headers a browser page on another origin may read (CORS exposes none by default).
RESULT_HEADERS = ["X-Request-ID", "X-Model", "X-Scale", "X-Input-Size", "X-Output-Size", "Server-Timing",
                  "X-Frames-Dropped", "X-Frames", "X-Alpha-Flattened", "X-Metadata", "X-Metadata-Dropped", "ETag",
                  "X-Cache", "RateLimit", "RateLimit-Policy"]

router = APIRouter()


@router.post(
    "/v1/superresolve",
    summary="Upscale an image",
    description=(
        "Send an image (multipart field `image`, or the raw body with an `image/*` Content-Type) and get it back "
        "upscaled. PNG output is streamed band by band as it is computed. Animated GIF, WebP and PNG: every "
        "frame is upscaled, durations and loop count kept, and the animation comes back whole as APNG, WebP or GIF "
        "(header `X-Frames`); `frames=first` takes the first frame only (header `X-Frames-Dropped`). `scale=1` "
        "runs IMDN_AS on a photo at its own size; `fit` says how a width and height together are met. Response headers "
        "say what was done: `X-Model`, `X-Scale`, "
        "`X-Input-Size`, `X-Output-Size` (WxH), `X-Request-ID`, and `Server-Timing` (decode, queue, inference, "
        "encode; for a streamed PNG, up to its first band). JPEG output of an image with transparency is "
        "composited onto white and says so in `X-Alpha-Flattened: white`. Inputs: PNG, JPEG, WebP, GIF, BMP, "
        "TIFF, HEIC/HEIF, AVIF. `X-Metadata` names the metadata blocks written (exif, xmp, iptc, or none; "
        "the ICC profile always goes), `X-Metadata-Dropped` what was left out and why. Instead of a body, `url=` "
        "(query or form) names a source the service fetches, if its host is allowed (docs/urls.md). `ETag` names "
        "the result."
    ),
    response_class=Response,
    responses={
        200: {"description": "The upscaled image",
              "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in MEDIA_TYPES.values()}},
        **problem_responses(BadRequestError, UnauthorizedError, ForbiddenOriginError, UploadTimeoutError,
                            PayloadTooLargeError,
                            UnsupportedMediaError, UnprocessableImageError, QueueFullError, NotReadyError,
                            InsufficientStorageError, RequestTimeoutError, SourceForbiddenError, SourceFailedError,
                            SourceTimeoutError),
    },
    openapi_extra={"requestBody": UPSCALE_BODY},
    dependencies=[Depends(require_api_key)],
)
async def superresolve(request: Request, params: Annotated[UpscaleParams, Query()], state: StateDep) -> Response:
    single_values(request.query_params.multi_items(), "query parameter")  # FastAPI keeps the last of a repeat
    if not state.is_ready() or state.admission is None or state.pool is None:
        raise NotReadyError("the service is starting or draining; retry shortly", headers={"Retry-After": "5"})
    return await unless_drain_ends(state, _superresolve(request, params, state))


@router.get(
    "/v1/superresolve",
    summary="Upscale the image at a URL: a signed link for an <img src> or a CDN",
    description="The same options as POST, and `url`, in the query, signed with `sig` (HMAC-SHA256 with a key of "
    "IMDN_URL_KEYS; `imdn-sr sign`, docs/urls.md). `ETag` and `Cache-Control: public` let caches keep the "
    "result; `If-None-Match` gets 304 before any work.",
    response_class=Response,
    responses={
        200: {"description": "The upscaled image",
              "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in MEDIA_TYPES.values()}},
        304: {"description": "Not modified: the client's copy (If-None-Match) is this result"},
        **problem_responses(BadRequestError, UnauthorizedError, LinkSignatureError, PayloadTooLargeError,
                            UnsupportedMediaError, UnprocessableImageError, QueueFullError, SourceFailedError,
                            NotReadyError, SourceTimeoutError),
    },
)
async def superresolve_link(request: Request, params: Annotated[LinkParams, Query()], state: StateDep) -> Response:
    check_link(request, state, single_values(request.query_params.multi_items(), "query parameter"), params.expires)
    if not state.is_ready() or state.admission is None or state.pool is None:
        raise NotReadyError("the service is starting or draining; retry shortly", headers={"Retry-After": "5"})
    return await unless_drain_ends(state, _superresolve(request, params, state))


async def _superresolve(request: Request, params: UpscaleParams, state: ServiceState) -> Response:
    settings = state.settings
    admission, pool = state.admission, state.pool
    assert admission is not None and pool is not None
    started = time.perf_counter()
    deadline = time.monotonic() + settings.request_timeout_s
    data, fields = (b"", {}) if request.method == "GET" else await receive_upload(request, state)
    params = merge_form_fields(params, fields)
    if params.url is not None:
        if data:
            raise BadRequestError("send the image either as the body or as url=, not both")
        data = await fetch_source(request, state, params.url)
    tag = await result_tag(state, data, params)
    if (early := early_answer(request, state, tag)) is not None:  # 304 or a cached result: no slot, no network
        return early
    ticket = admission.admit(client_of(request, bool(settings.api_keys)))
    cancel = threading.Event()

    def still_wanted() -> None:  # called by the decoder before each block it reads
        if cancel.is_set():
            raise DecodeCancelledError("the request ended")
        if time.monotonic() > deadline:
            raise RequestTimeoutError("decoding ran past the request's time limit")

    try:
        scale = params.scale if params.scale is not None or params.width or params.height else DEFAULT_SCALE
        # The pool as this request sees it: no more tiles once it is cancelled or past its deadline.
        upscaler = Upscaler(RequestRunner(pool, cancel, deadline), budget_bytes=state.budget_bytes,
                            max_batch=settings.max_batch, max_scale=settings.max_scale, tile_size=settings.tile_size,
                            refine_stats=settings.refine_stats, any_scale=settings.any_scale,
                            available=state.model_names, content=params.content or settings.content,
                            part_window=part_window(state.devices), parts_budget_bytes=state.parts_budget_bytes)

        def checked_plan(size: tuple[int, int]) -> Plan:
            plan = upscaler.plan(size, scale, params.width, params.height, params.model, fit=params.fit)
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
        # Every limit the header can decide, and the memory the request will need, before any pixel is decoded.
        layout, animation = await admission.read_header(read_header, data, settings.max_input_pixels,
                                                        settings.max_jpeg_scans, settings.max_frames,
                                                        params.frames == "all")
        plan = checked_plan((layout.height, layout.width))
        frames = 1
        if animation is not None:  # its frames are decoded one at a time as they are upscaled
            if params.format not in ANIMATION_OUTPUTS:
                raise BadRequestError(f"{params.format.upper()} cannot hold an animation: ask format=png (APNG), "
                                      "webp or gif, or frames=first for the first frame alone")
            check_output_pixels(animation, plan.out_size, settings.max_animation_pixels)
            frames = animation.frames
        rate_headers = admission.spend_pixels(ticket, frames * plan.out_size[0] * plan.out_size[1])
        need = request_bytes(plan, layout, len(data), params.format, state.budget_bytes, state.parts_budget_bytes)
        if animation is not None:
            need += animation_bytes(plan, frames)
        queue_start = time.perf_counter()
        await watched(request, admission.wait_turn(ticket, need, max(0.0, deadline - time.monotonic())), cancel,
                      "while queued")
        timings.queue = time.perf_counter() - queue_start
        state.metrics.queue_wait.observe(timings.queue)
        decode_start = time.perf_counter()
        picture = None
        if animation is None:
            picture = await watched(request, admission.decode(decode, data, settings.max_input_pixels,
                                                              settings.max_jpeg_scans, still_wanted,
                                                              settings.max_frames, settings.decode_timeout_s),
                                    cancel, "while its image was decoded")
            if picture.size != plan.in_size:  # an orientation the header did not show
                plan = checked_plan(picture.size)
        del data
        timings.decode = time.perf_counter() - decode_start
        out_h, out_w = plan.out_size
        metadata = None if picture is None else await admission.read_header(  # parses EXIF: off the loop
            metadata_for_output, picture.metadata, params.metadata or settings.metadata, out_w, out_h, params.format)
    except BaseException:
        cancel.set()
        admission.leave(ticket)
        raise

    if animation is not None:
        work = animation_chunks(upscaler, animation, plan, params.format, params.quality, settings.png_compress_level,
                                timings, cancel, still_wanted)
    else:
        assert picture is not None
        work = encoded_chunks(upscaler, picture, plan, params.format, params.quality, settings.png_compress_level,
                              timings, cancel, settings.stream_heartbeat_s, metadata)
    chunks = run_in_thread(while_in_use(pool, work), cancel)

    def finish() -> None:
        admission.leave(ticket)  # once: a second call does nothing

    try:
        first = await watched(request, chunks.__anext__(), cancel, "before the first byte")
    except BaseException:
        finish()
        await chunks.aclose()
        raise
    model_names = plan.label
    in_h, in_w = plan.in_size
    request.state.log_extra = {
        **getattr(request.state, "log_extra", {}), "model": model_names,
        "in": f"{in_w}x{in_h}", "out": f"{out_w}x{out_h}", "format": params.format, "frames": frames,
    }
    headers = {
        "X-Model": model_names,
        "X-Scale": f"{plan.scale[1]:.4g}x{plan.scale[0]:.4g}",
        "X-Input-Size": f"{in_w}x{in_h}",
        "X-Output-Size": f"{out_w}x{out_h}",
        "Server-Timing": timings.server_timing(),
        "Content-Disposition": f'inline; filename="upscaled.{params.format}"',
        "ETag": tag,
        "Cache-Control": cache_control(request, settings.cache_max_age),
        **rate_headers,
    }
    if animation is not None:
        headers["X-Frames"] = str(frames)
    elif picture is not None and picture.frames > 1:
        headers["X-Frames-Dropped"] = str(picture.frames - 1)
    if params.format == "jpeg" and picture is not None and picture.alpha is not None:
        headers["X-Alpha-Flattened"] = "white"  # JPEG has no alpha: encode_whole composites onto white
    # Animations are written without metadata (their writers take frames, not blocks).
    headers["X-Metadata"] = ", ".join(metadata.blocks) if metadata is not None and metadata.blocks else "none"
    if metadata is not None and metadata.dropped:
        headers["X-Metadata-Dropped"] = "; ".join(metadata.dropped)
        request.state.log_extra["metadata_dropped"] = headers["X-Metadata-Dropped"]

    media_type = MEDIA_TYPES[params.format]
    recorder = ResultRecorder(state.results, tag, media_type, headers) if state.results is not None else None
    if recorder is not None:
        headers["X-Cache"] = "miss"

    async def body() -> object:
        try:
            yield first
            if recorder is not None:
                recorder.add(first)
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
                if recorder is not None:
                    recorder.add(chunk)
            if recorder is not None:
                recorder.complete()
            state.metrics.encode.labels(params.format).observe(timings.encode)
            state.metrics.output_pixels.labels(model_names).inc(out_w * out_h * frames)
            state.metrics.frames.labels(params.format).inc(frames)
            request.state.log_extra.update(inference_s=round(timings.inference, 4), encode_s=round(timings.encode, 4),
                                           decode_s=round(timings.decode, 4), queue_s=round(timings.queue, 4),
                                           total_s=round(time.perf_counter() - started, 4))
        finally:
            finish()
            await chunks.aclose()

    return ClosingStreamingResponse(body(), media_type=media_type, headers=headers)  # type: ignore[arg-type]


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
        "metadata": state.settings.metadata,
        "scale_policy": scale_policy(state.settings.any_scale, state.settings.content),
        "limits": {
            "max_upload_bytes": state.settings.max_upload_bytes,
            "max_input_pixels": state.settings.max_input_pixels,
            "max_output_pixels": state.settings.max_output_pixels,
            "max_animation_pixels": state.settings.max_animation_pixels,
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
