"""Connection-level guard under uvicorn's HTTP protocol: a client must finish each request's headers in time,
and within a number of bytes.

uvicorn closes idle keep-alive connections, but one that has sent part of a request line or its headers
waits forever (the keep-alive timer stops at the first byte). Bodies have their own limits
(service/upload.py); this covers the headers, for whichever protocol class uvicorn picked (h11 or httptools:
both keep the request in progress as `cycle` and call `on_response_complete`). The count of header fields is
checked once they are parsed, by `RequestGuard` (service/security.py).
"""

from __future__ import annotations

import asyncio
import json
import logging

from service.errors import PROBLEM_TYPE_BASE, HeadersTooLargeError

log = logging.getLogger("service")


def headers_too_large(max_bytes: int) -> bytes:
    """The raw 431 problem+json response (sent by the protocol itself: there is no request to hand the app)."""
    error = HeadersTooLargeError(f"the request line and headers are over {max_bytes:,} bytes (IMDN_MAX_HEADER_BYTES)")
    body = json.dumps({"type": PROBLEM_TYPE_BASE + error.kind, "title": error.title, "status": error.status,
                       "detail": error.detail}).encode()
    return (f"HTTP/1.1 {error.status} Request Header Fields Too Large\r\ncontent-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def with_header_limits(base: type[asyncio.Protocol], timeout: float, max_bytes: int) -> type[asyncio.Protocol]:
    """`base` whose connections close when a request's headers are not complete `timeout` s after the
    connection opened or the first byte of a later request arrived, or take more than `max_bytes` (431 first:
    httptools read any number; h11 stops at its own 16 KB with a 400). Between requests the connection is
    idle keep-alive, which uvicorn times (IMDN_KEEPALIVE_S, longer than load balancers' idle timeouts)."""

    class HeaderLimitProtocol(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._header_wait = 0  # which wait for headers is current; each gets its own deadline
            self._awaited_cycle = None
            self._idle = False  # between a response and the next request's first byte
            self._awaiting = False  # a request's headers have begun and are not complete
            self._header_bytes = 0  # bytes received since they began (the chunk ending them may hold body too)
            self._refused = False
            self._await_headers()

        def _await_headers(self) -> None:
            self._header_wait += 1
            self._awaiting, self._header_bytes = True, 0
            self._awaited_cycle = self.cycle
            wait = self._header_wait
            self.loop.call_later(timeout, self._header_deadline, wait)

        def _header_deadline(self, wait: int) -> None:
            # Still the same wait, and no new request began (a new cycle means its headers arrived).
            if wait == self._header_wait and self.cycle is self._awaited_cycle and not self.transport.is_closing():
                log.debug("closing a connection whose request headers took over %g s", timeout)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._header_wait += 1  # the wait for this request's headers, if any, is over
            self._awaiting = False
            self._idle = True

        def _refuse_headers(self) -> None:
            log.warning("refused a request whose headers are over %d bytes (431)", max_bytes)
            self._header_wait += 1
            self._awaiting, self._refused = False, True
            self.transport.write(headers_too_large(max_bytes))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # answered 431 and closing: nothing more is parsed
            if self._idle and data:
                self._idle = False
                self._await_headers()
            if self._awaiting:
                self._header_bytes += len(data)
            super().data_received(data)
            if self.cycle is not self._awaited_cycle:
                self._header_wait += 1  # headers complete: this wait is over
                self._awaiting = False
            elif self._awaiting and self._header_bytes > max_bytes and not self.transport.is_closing():
                # Still incomplete past the limit: the parser saw at most one read (<= 256 KB) more than it.
                # (A parser that refused the request itself has closed the transport already.)
                self._refuse_headers()

    HeaderLimitProtocol.__name__ = f"HeaderLimit{base.__name__}"
    return HeaderLimitProtocol
