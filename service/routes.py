"""HTTP routes: parse, call the engine, shape the response."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import io
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from PIL import Image, ImageDraw
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.engine import Upscaler, scale_policy
from model.imageio import decode
from service.errors import (
    BadRequestError,
    ClientDisconnectedError,
    ForbiddenOriginError,
    NotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    RequestTimeoutError,
    UnauthorizedError,
    UnprocessableImageError,
    UnsupportedMediaError,
    problem_responses,
)
from service.processing import RequestRunner, Timings, encoded_chunks, run_in_thread, while_in_use
from service.state import ServiceState
from service.upload import UploadTimeoutError, read_image

STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
# The formats' own limits (libwebp: 16383; libjpeg via Pillow: 65500); PNG has none that matters here.
FORMAT_MAX_SIDE = {"webp": 16383, "jpeg": 65500}
# Headers a browser page on another origin may read (CORS exposes none by default).
RESULT_HEADERS = ["X-Request-ID", "X-Model", "X-Scale", "X-Input-Size", "X-Output-Size", "Server-Timing",
                  "X-Frames-Dropped", "X-Alpha-Flattened"]

router = APIRouter()


class UpscaleParams(BaseModel):
    """How to upscale; as query parameters, or as form fields beside a multipart upload."""

    model_config = ConfigDict(extra="forbid")

    scale: float | None = Field(None, gt=1, allow_inf_nan=False,
                                description="Scale factor > 1 (default 2 when no width/height is given)")
    width: int | None = Field(None, ge=1, le=65535, description="Target width in pixels")
    height: int | None = Field(None, ge=1, le=65535, description="Target height in pixels; "
                               "give one of width/height to keep the aspect ratio")
    model: Literal["auto", "x2", "x3", "x4", "as"] = Field(
        "auto", description="auto: IMDN x2/x3/x4 for those exact scales, otherwise the any-scale method "
        "(any_scale); x2/x3/x4: that network, then bicubic to the target; as: bicubic + IMDN_AS at any scale")
    any_scale: Literal["as", "downscale"] | None = Field(
        None, description="how model=auto reaches a non-integer scale: 'as' (bicubic + IMDN_AS, trained on "
        "camera blur, noise and JPEG: for photos) or 'downscale' (the next integer IMDN, then bicubic down: for "
        "clean, already sharp images); default: the server's IMDN_ANY_SCALE")
    format: Literal["png", "webp", "jpeg"] = Field("png", description="Output format; PNG is streamed; JPEG has "
                                                  "no alpha, so transparency is flattened onto white")
    quality: int = Field(90, ge=1, le=100, description="WebP/JPEG quality")


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def require_api_key(request: Request, state: StateDep) -> None:
    keys = state.settings.api_keys
    if not keys:
        return
    offered = request.headers.get("x-api-key", "")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not offered and scheme.lower() == "bearer":  # auth schemes are case-insensitive (RFC 9110 11.1)
        offered = token.strip()
    # Compare against every key, each in constant time: timing reveals nothing about any key.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered.encode(), key.encode())
    if not matched:
        raise UnauthorizedError("send a valid API key in the X-API-Key header (or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})


def merge_form_fields(params: UpscaleParams, fields: dict[str, str]) -> UpscaleParams:
    if not fields:
        return params
    try:
        return UpscaleParams.model_validate({**params.model_dump(exclude_unset=True), **fields})
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadRequestError(detail) from exc


UPSCALE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "The image file"},
                    **{name: {**schema, "description": f"Same as the `{name}` query parameter"}
                       for name, schema in UpscaleParams.model_json_schema()["properties"].items()},
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


async def first_chunk(request: Request, chunks: AsyncIterator[bytes], cancel: threading.Event) -> bytes:
    """Wait for the first encoded bytes, dropping the work if the client hangs up meanwhile."""
    pending = asyncio.ensure_future(chunks.__anext__())
    while True:
        done, _ = await asyncio.wait({pending}, timeout=0.25)
        if done:
            return pending.result()
        if await request.is_disconnected():
            cancel.set()  # the worker stops before its next tile
            pending.cancel()
            # Let the cancellation reach the generator: closing it while __anext__ is still running fails.
            with contextlib.suppress(asyncio.CancelledError, Exception):  # the client is gone: no result matters
                await pending
            raise ClientDisconnectedError("client disconnected before the first byte")


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
                            RequestTimeoutError),
    },
    openapi_extra={"requestBody": UPSCALE_BODY},
    dependencies=[Depends(require_api_key)],
)
async def superresolve(request: Request, params: Annotated[UpscaleParams, Query()], state: StateDep) -> Response:
    settings = state.settings
    if not state.is_ready() or state.admission is None or state.pool is None:
        raise NotReadyError("the service is starting or draining; retry shortly", headers={"Retry-After": "5"})
    admission, pool = state.admission, state.pool
    admission.admit()
    admitted = True
    started = time.perf_counter()
    deadline = time.monotonic() + settings.request_timeout_s
    try:
        data, fields = await read_image(request, settings.max_upload_bytes, settings.request_timeout_s)
        params = merge_form_fields(params, fields)
        timings = Timings()
        decode_start = time.perf_counter()
        picture = await asyncio.to_thread(decode, data, settings.max_input_pixels)
        del data
        timings.decode = time.perf_counter() - decode_start
        scale = params.scale if params.scale is not None or params.width or params.height else 2.0
        upscaler = Upscaler(pool, state.budget_bytes, settings.max_batch, settings.max_scale,
                            settings.tile_size, settings.refine_stats, params.any_scale or settings.any_scale,
                            settings.models)
        plan = upscaler.plan(picture.size, scale, params.width, params.height, params.model)
        out_h, out_w = plan.out_size
        side_limit = FORMAT_MAX_SIDE.get(params.format)
        if side_limit is not None and max(out_h, out_w) > side_limit:
            raise PayloadTooLargeError(f"{params.format.upper()} images are limited to {side_limit} pixels a side; "
                                       f"the output would be {out_w}x{out_h}: use format=png")
        if out_h * out_w > settings.max_output_pixels:
            raise PayloadTooLargeError(f"the output would be {out_w}x{out_h} = {out_w * out_h:,} pixels; "
                                       f"the limit is {settings.max_output_pixels:,}")
        queue_start = time.perf_counter()
        await admission.slot(max(0.0, deadline - time.monotonic()))
        timings.queue = time.perf_counter() - queue_start
        state.metrics.queue_wait.observe(timings.queue)
    except BaseException:
        admission.leave()
        raise

    cancel = threading.Event()
    upscaler.runner = RequestRunner(pool, cancel, deadline)
    chunks = run_in_thread(while_in_use(pool, encoded_chunks(upscaler, picture, plan, params.format, params.quality,
                                                             settings.png_compress_level, timings, cancel)), cancel)

    def finish() -> None:
        nonlocal admitted
        if admitted:
            admitted = False
            admission.release_slot()
            admission.leave()

    try:
        first = await first_chunk(request, chunks, cancel)
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
            async for chunk in chunks:
                yield chunk
            state.metrics.encode.labels(params.format).observe(timings.encode)
            state.metrics.output_pixels.labels(model_names).inc(out_w * out_h)
            request.state.log_extra.update(inference_s=round(timings.inference, 4), encode_s=round(timings.encode, 4),
                                           decode_s=round(timings.decode, 4), queue_s=round(timings.queue, 4),
                                           total_s=round(time.perf_counter() - started, 4))
        finally:
            finish()
            await chunks.aclose()

    return StreamingResponse(body(), media_type=MEDIA_TYPES[params.format], headers=headers)  # type: ignore[arg-type]


@router.get("/v1/models", summary="Loaded models, devices and weights",
            dependencies=[Depends(require_api_key)], responses=problem_responses(UnauthorizedError))
async def list_models(state: StateDep) -> dict[str, object]:
    return {
        "models": [vars(info) for info in state.models],
        "devices": state.devices,
        "backend": state.backend,
        "replicas": len(state.pool.replicas) if state.pool else 0,
        "max_scale": state.settings.max_scale,
        "any_scale": state.settings.any_scale,
        "scale_policy": scale_policy(state.settings.any_scale),
        "limits": {
            "max_upload_bytes": state.settings.max_upload_bytes,
            "max_input_pixels": state.settings.max_input_pixels,
            "max_output_pixels": state.settings.max_output_pixels,
        },
        "ready": state.is_ready(),
    }


@router.get("/healthz", summary="Liveness: the process and its model workers are alive",
            responses=problem_responses(NotReadyError))
async def healthz(state: StateDep) -> dict[str, str]:
    if state.startup_error:
        raise NotReadyError(state.startup_error)
    if state.pool is not None and not state.pool.alive():
        raise NotReadyError("a model worker has stopped")
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: every model loaded and warm, not draining",
            responses=problem_responses(NotReadyError))
async def readyz(state: StateDep) -> dict[str, str]:
    if state.draining:
        raise NotReadyError("draining: finishing in-flight requests before shutdown")
    if not state.is_ready():
        raise NotReadyError("models are loading or a model worker has stopped")
    if warming := state.workers_warming():
        raise NotReadyError(f"{warming} of {state.settings.workers} worker processes not ready yet")
    return {"status": "ready"}


async def metrics_endpoint(state: StateDep) -> Response:
    """Prometheus metrics (on the API port unless IMDN_METRICS_PORT moves them; added by create_app)."""
    return Response(generate_latest(state.metrics.exposed), media_type=CONTENT_TYPE_LATEST)


@functools.cache
def favicon_ico() -> bytes:
    """The page's icon, drawn here (nothing binary in the repository): big pixels turning into fine ones."""
    side = 64
    icon = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle((0, 0, side - 1, side - 1), radius=12, fill=(36, 87, 214, 255))  # the page's accent
    for i, shade in enumerate((150, 205, 205, 255)):  # coarse 2x2 on the left, fine 8x8 on the right
        x, y = 8 + (i % 2) * 12, 20 + (i // 2) * 12
        draw.rectangle((x, y, x + 11, y + 11), fill=(shade, shade, 255, 255))
    for row in range(8):
        for col in range(8):
            shade = 150 + 105 * ((row + col) % 2)
            x, y = 34 + col * 3, 20 + row * 3
            draw.rectangle((x, y, x + 2, y + 2), fill=(shade, shade, 255, 255))
    out = io.BytesIO()
    icon.save(out, format="ICO", sizes=[(16, 16), (32, 32), (48, 48), (64, 64)])
    return out.getvalue()


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(favicon_ico(), media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/", include_in_schema=False, response_model=None)
async def index() -> Response:
    page = STATIC / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html")
    return JSONResponse({"service": "imdn-sr", "docs": "/docs", "endpoint": "POST /v1/superresolve"})
