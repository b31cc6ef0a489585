"""Browser-facing security: response headers (a Content-Security-Policy per kind of response), the Origin
rule for state-changing requests, refusal of ambiguous HTTP framing (request smuggling), and the API-key
check on /v1/* (``require_api_key``, a route dependency).

Two ASGI layers: ``SecurityHeaders`` wraps the whole app (outside Starlette's error middleware, so even a
500 carries the headers); ``RequestGuard`` sits inside the request-id/logging middleware, so what it
refuses is logged and counted like any other response.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    BadRequestError,
    ForbiddenOriginError,
    HeadersTooLargeError,
    ServiceError,
    UnauthorizedError,
    problem,
)
from service.state import StateDep

# The service's own page; its inline <script> and <style> are allowed by their SHA-256, nothing else inline.
PAGE_PATHS = frozenset({"/"})
PAGE_POLICY = ("default-src 'none'; script-src 'self' {scripts}; style-src 'self' {styles}; "
               "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'")
# /docs: Swagger UI, its assets served from this service (service/apidocs.py), so no CDN is allowed.
# Its inline <script> is allowed by hash; Swagger UI sets inline styles itself.
DOCS_PATHS = frozenset({"/docs"})
DOCS_POLICY = ("default-src 'none'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; form-action 'self'; "
               "base-uri 'none'")
# Everything else (JSON, images, problem+json, metrics) is data, never a document: allow nothing.
DATA_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'"
HTML_LIMIT = 1 << 20  # the pages are tens of KB; anything bigger is passed through unhashed

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Optional whitespace around a field value (RFC 9110 5.6.3): the one thing trimmed from either key header.
# h11 trims it, httptools does not; anything else (a no-break space, ...) is part of the key and fails.
OWS = " \t"


def offered_key(headers: Mapping[str, str]) -> str:
    """The API key a request carries: X-API-Key, else an Authorization Bearer token ('' if neither)."""
    offered = headers.get("x-api-key", "").strip(OWS)
    scheme, _, token = headers.get("authorization", "").strip(OWS).partition(" ")
    if not offered and scheme.lower() == "bearer":  # auth schemes are case-insensitive (RFC 9110 11.1)
        offered = token.strip(OWS)
    return offered


def require_api_key(request: Request, state: StateDep) -> None:
    """A route dependency: with IMDN_API_KEYS set, a request must carry one of them (X-API-Key or Bearer)."""
    keys = state.settings.api_keys
    if not keys:
        return
    offered = offered_key(request.headers)
    # Compare against every key, each in constant time: timing reveals nothing about any key.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered.encode(), key.encode())
    if not matched:
        raise UnauthorizedError("send a valid API key in the X-API-Key header (or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})


def inline_hashes(html: bytes, tag: str) -> str:
    """CSP sources ('sha256-...') for each inline <tag>...</tag> block of a page, in order."""
    sources = []
    for match in re.finditer(rb"<%s(\s[^>]*)?>(.*?)</%s\s*>" % (tag.encode(), tag.encode()), html,
                             re.DOTALL | re.IGNORECASE):
        if b"src=" in (match.group(1) or b"").lower():
            continue  # an external script: 'self' or the CDN covers it
        digest = base64.b64encode(hashlib.sha256(match.group(2)).digest()).decode()
        sources.append(f"'sha256-{digest}'")
    return " ".join(dict.fromkeys(sources))


def frame_options(frame_ancestors: str) -> bytes | None:
    """X-Frame-Options for browsers without CSP frame-ancestors; it can only say DENY or SAMEORIGIN."""
    return {"'none'": b"DENY", "'self'": b"SAMEORIGIN"}.get(frame_ancestors)


class SecurityHeaders:
    """nosniff, Referrer-Policy, X-Frame-Options and a CSP on every response; a response that already
    has one of these keeps its own."""

    def __init__(self, app: ASGIApp, frame_ancestors: str) -> None:
        self.app = app
        self.frame_ancestors = frame_ancestors
        self.common = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
        xfo = frame_options(frame_ancestors)
        if xfo is not None:
            self.common.append((b"x-frame-options", xfo))

    def policy(self, path: str, html: bytes | None) -> bytes:
        if html is not None and path in PAGE_PATHS:
            text = PAGE_POLICY.format(scripts=inline_hashes(html, "script"), styles=inline_hashes(html, "style"))
        elif html is not None and path in DOCS_PATHS:
            text = DOCS_POLICY.format(scripts=inline_hashes(html, "script"))
        else:
            text = DATA_POLICY
        return re.sub(r"\s+;", ";", f"{text}; frame-ancestors {self.frame_ancestors}").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        hashed_page = path in PAGE_PATHS or path in DOCS_PATHS
        start: Message | None = None
        held: list[Message] = []
        size = 0

        def with_headers(message: Message, html: bytes | None) -> Message:
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            extra = [*self.common, (b"content-security-policy", self.policy(path, html))]
            headers += [(name, value) for name, value in extra if name not in present]
            return {**message, "headers": headers}

        async def send_secured(message: Message) -> None:
            nonlocal start, size
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if hashed_page and content_type.startswith(b"text/html"):
                    start = message  # hold it: the policy names the hashes of the body's inline blocks
                    return
                await send(with_headers(message, None))
                return
            if start is not None and message["type"] == "http.response.body":
                held.append(message)
                size += len(message.get("body", b""))
                if message.get("more_body", False) and size <= HTML_LIMIT:
                    return
                html = b"".join(m.get("body", b"") for m in held)
                await send(with_headers(start, html if size <= HTML_LIMIT else None))
                start = None
                for part in held:
                    await send(part)
                held.clear()
                return
            await send(message)

        await self.app(scope, receive, send_secured)


def host_port(netloc: str, default_port: int) -> tuple[str, int | None]:
    """'Example.com:8000' -> ('example.com', 8000); no port -> the scheme's default; malformed -> ('', None)."""
    parts = urlsplit("//" + netloc)
    try:
        return parts.hostname or "", parts.port or default_port
    except ValueError:
        return "", None


def same_origin(origin: str, host_header: str) -> bool:
    """Does a browser's Origin name this service, as the client addressed it (the Host header)?

    The scheme is not compared: behind a TLS-terminating proxy the service sees http either way.
    """
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or not host_header:
        return False
    default = 443 if parts.scheme == "https" else 80
    return host_port(parts.netloc, default) == host_port(host_header, default)


class RequestGuard:
    """Refuse, before any work: more than `max_headers` header fields or `max_header_bytes` (431), ambiguous
    framing (Content-Length with Transfer-Encoding, repeated Content-Length, a transfer coding other than
    chunked) and a Host header missing (HTTP/1.1) or repeated, answered with Connection: close; and a
    state-changing browser request from a foreign Origin (cross-site form POSTs and fetches)."""

    def __init__(self, app: ASGIApp, allowed_origins: list[str], max_headers: int = 100,
                 max_header_bytes: int = 65536) -> None:
        self.app = app
        self.allowed = frozenset(allowed_origins)
        self.max_headers, self.max_header_bytes = max_headers, max_header_bytes

    def refusal(self, scope: Scope) -> tuple[ServiceError, bool] | None:
        headers = scope.get("headers", [])
        if len(headers) > self.max_headers:
            return HeadersTooLargeError(f"the request has {len(headers)} header fields; the limit is "
                                        f"{self.max_headers} (IMDN_MAX_HEADERS)"), True
        # Headers that arrived whole in one read; the protocol cuts those still arriving (service/connections.py).
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + len(scope["method"]) + 12 + \
            sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.max_header_bytes:
            return HeadersTooLargeError(f"the request line and headers are over {self.max_header_bytes:,} bytes "
                                        "(IMDN_MAX_HEADER_BYTES)"), True
        hosts = [value for name, value in headers if name == b"host"]
        if len(hosts) > 1 or (not hosts and scope.get("http_version") == "1.1"):
            # RFC 9112 3.2 (h11 refuses these itself; httptools passes them on).
            return BadRequestError(f"a request has one Host header (HTTP/1.1 must send it), never more; this "
                                   f"one has {len(hosts)} (RFC 9112 3.2)"), True
        lengths = [value for name, value in headers if name == b"content-length"]
        codings = [value for name, value in headers if name == b"transfer-encoding"]
        if (lengths and codings) or len(lengths) > 1 or len(codings) > 1 or \
                any(value.strip().lower() != b"chunked" for value in codings):
            return BadRequestError("ambiguous message framing: send either one Content-Length or "
                                   "Transfer-Encoding: chunked (RFC 9112 6.1)"), True
        if scope["method"] in SAFE_METHODS:
            return None
        origin = next((value.decode("latin-1") for name, value in headers if name == b"origin"), None)
        if origin is None or origin in self.allowed:
            return None  # curl, SDKs and servers send no Origin
        host = next((value.decode("latin-1") for name, value in headers if name == b"host"), "")
        if same_origin(origin, host):
            return None
        return ForbiddenOriginError(f"requests from the web origin {origin[:100]!r} are not allowed: only this "
                                    "service's own page and the origins in IMDN_CORS_ORIGINS may send them"), False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self.refusal(scope) if scope["type"] == "http" else None
        if refused is None:
            await self.app(scope, receive, send)
            return
        error, close = refused
        headers = {"Connection": "close"} if close else None
        await problem(Request(scope), error.status, error.title, error.detail, error.kind, headers)(
            scope, receive, send)
