"""Domain errors -> RFC 9457 problem+json responses, mapped in one place."""

from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.picture import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from model.plan import UpscaleError
from model.runner import is_out_of_memory

log = logging.getLogger("service")
PROBLEM_TYPE_BASE = "https://imdn-sr.dev/problems/"


class ServiceError(Exception):
    """An error with its HTTP status; `kind` names the problem type."""

    status = 500
    kind = "internal-error"
    title = "Internal server error"

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequestError(ServiceError):
    status, kind, title = 400, "bad-request", "Bad request"


class UnauthorizedError(ServiceError):
    status, kind, title = 401, "unauthorized", "Missing or invalid API key"


class ForbiddenOriginError(ServiceError):
    status, kind, title = 403, "forbidden-origin", "Cross-origin request refused"


class PayloadTooLargeError(ServiceError):
    status, kind, title = 413, "too-large", "Upload or image too large"


class UnsupportedMediaError(ServiceError):
    status, kind, title = 415, "unsupported-media-type", "Not a supported image"


class UnprocessableImageError(ServiceError):
    status, kind, title = 422, "unprocessable-image", "Image could not be decoded"


class HeadersTooLargeError(ServiceError):
    status, kind, title = 431, "headers-too-large", "Request header fields too large"


class QueueFullError(ServiceError):
    status, kind, title = 429, "queue-full", "Too many requests queued"


class RateLimitedError(QueueFullError):
    kind, title = "rate-limited", "Rate limit reached"


class NotReadyError(ServiceError):
    status, kind, title = 503, "not-ready", "Service not ready"


class OutOfMemoryError(ServiceError):
    status, kind, title = 503, "out-of-memory", "Not enough memory for this image right now"


class InsufficientStorageError(ServiceError):
    status, kind, title = 507, "insufficient-storage", "Not enough disk space right now"


class RequestTimeoutError(ServiceError):
    status, kind, title = 504, "timeout", "Request took too long"


class RequestCancelledError(Exception):
    """The client went away; its remaining work is dropped."""


class ClientDisconnectedError(ServiceError):
    # nginx's convention: nobody reads this response, but logs and metrics say what happened.
    status, kind, title = 499, "client-closed-request", "Client closed the request"


# Each documented error response, for the OpenAPI schema.
PROBLEM_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def problem_responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, object]]:
    return {
        e.status: {"description": e.title, "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}}}
        for e in errors
    }


def problem(request: Request, status: int, title: str, detail: str, kind: str,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE_BASE + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", ""),
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


# A write that failed for want of space (ENOSPC, a quota) or past a file size limit (EFBIG).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def as_service_error(exc: Exception) -> ServiceError:
    """Translate engine and image errors into their HTTP meaning."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ImageTooLargeError):
        return PayloadTooLargeError(str(exc))
    if isinstance(exc, UnsupportedImageError):
        return UnsupportedMediaError(str(exc))
    if isinstance(exc, ImageDecodeError):
        return UnprocessableImageError(str(exc))
    if isinstance(exc, UpscaleError):
        return BadRequestError(str(exc))
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:  # the disk is the server's: retry, not a 500
        log.warning("disk full: %s", exc)
        return InsufficientStorageError("the server's disk is full right now; retry later",
                                        headers={"Retry-After": "10"})
    if is_out_of_memory(exc):  # the engine already retried with smaller tiles; other requests may be holding it
        log.warning("out of memory: %s", exc)
        return OutOfMemoryError("the server ran out of memory for this image; retry later, or send a smaller "
                                "image or scale", headers={"Retry-After": "10"})
    return ServiceError("an unexpected error occurred; it has been logged")


def allowed_methods(request: Request, named: str) -> str:
    """Every method the API document gives this path (GET and POST for /v1/superresolve); else Starlette's."""
    operations = request.app.openapi().get("paths", {}).get(request.url.path, {})
    return ", ".join(sorted(m.upper() for m in operations)) or named


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        err = as_service_error(exc)
        if err.status >= 500 and type(err) is ServiceError:
            log.exception("unhandled error", exc_info=exc)
        return problem(request, err.status, err.title, err.detail, err.kind, err.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg")))
        return problem(request, 400, BadRequestError.title, "; ".join(parts), BadRequestError.kind)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Starlette names the first route's methods; a path may have several routes
            headers["Allow"] = allowed_methods(request, headers.get("Allow", ""))
        return problem(request, exc.status_code, str(exc.detail), str(exc.detail), kind, headers)

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    for error in (ServiceError, ImageDecodeError, ImageTooLargeError, UpscaleError, Exception):
        app.add_exception_handler(error, on_service_error)
