"""Connection-level guard under uvicorn's HTTP protocol: a client must finish each request's headers in time.

uvicorn closes idle keep-alive connections, but one that has sent part of a request line or its headers
waits forever (the keep-alive timer stops at the first byte). Bodies have their own limits
(service/upload.py); this covers the headers, for whichever protocol class uvicorn picked (h11 or httptools:
both keep the request in progress as `cycle` and call `on_response_complete`).
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("service")


def with_header_timeout(base: type[asyncio.Protocol], timeout: float) -> type[asyncio.Protocol]:
    """`base` whose connections close when a request's headers are not complete `timeout` s after the
    connection opened or the first byte of a later request arrived. Between requests the connection is
    idle keep-alive, which uvicorn times (IMDN_KEEPALIVE_S, longer than load balancers' idle timeouts)."""

    class HeaderTimeoutProtocol(base):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._header_wait = 0  # which wait for headers is current; each gets its own deadline
            self._awaited_cycle = None
            self._idle = False  # between a response and the next request's first byte
            self._await_headers()

        def _await_headers(self) -> None:
            self._header_wait += 1
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
            self._idle = True

        def data_received(self, data: bytes) -> None:
            if self._idle and data:
                self._idle = False
                self._await_headers()
            super().data_received(data)
            if self.cycle is not self._awaited_cycle:
                self._header_wait += 1  # headers complete: this wait is over

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    return HeaderTimeoutProtocol
