"""One server process: uvicorn around the app, a drain on SIGTERM/SIGINT/SIGHUP, and an exit code that says how
it went."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import MutableSequence
from types import FrameType

import uvicorn

from service.app import create_app
from service.config import Settings
from service.connections import with_header_limits
from service.metrics import serve_metrics
from service.state import ServiceState

log = logging.getLogger("service")

# Past the drain deadline, how long uvicorn still waits for connections before cancelling their tasks.
DRAIN_BACKSTOP_S = 5.0
# The header limit counts whole chunks the transport reads (up to 256 KB each) before the parser gives up.
H11_HEADROOM = 2**20


# SIGHUP (a closed terminal, `kill -HUP`, some process managers' "reload") drains like SIGTERM: there is no
# configuration to reload in place, and its default action killed the process mid-request with no log line.
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT/SIGHUP, report not-ready first, then let uvicorn finish in-flight requests and exit."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.service_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.service_state.draining:
            supervisor = multiprocessing.parent_process() if self.service_state.worker_flags is not None else None
            if supervisor is not None and supervisor.pid != os.getppid():
                log.warning("the supervisor (pid %s) is gone: draining this worker", supervisor.pid)
            log.info("signal %s: draining (up to %g s for in-flight requests; then those not streaming get 503 "
                     "and streams are cut)", signal_name(sig), self.service_state.settings.drain_timeout_s)
        self.service_state.start_drain()
        if self.service_state.worker_flags is not None or sig == signal.SIGHUP:
            # A worker gets Ctrl-C's SIGINT and the supervisor's SIGTERM: both mean drain, never force-exit.
            # SIGHUP is not one of uvicorn's signals: it goes on as the SIGTERM it stands for.
            sig = signal.SIGTERM
        super().handle_exit(sig, frame)


def serve(settings: Settings, host: str, port: int, sock: socket.socket | None = None,
          worker: tuple[int, MutableSequence[int]] | None = None) -> int:
    """Run one server process: on (host, port), or on `sock` shared by IMDN_WORKERS worker processes."""
    app = create_app(settings)
    state: ServiceState = app.state.service
    if worker is not None:
        state.worker_index, state.worker_flags = worker
    elif settings.metrics_port and not serve_metrics(settings.metrics_port, host, state.metrics.exposed):
        return 1
    config = uvicorn.Config(app, host=host, port=port, log_config=None,
                            # A backstop only: at the drain deadline the service ends its own requests
                            # (503 or a cut stream); uvicorn's cancellation would answer 500.
                            timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s + DRAIN_BACKSTOP_S),
                            timeout_keep_alive=settings.keepalive_s,
                            log_level=settings.log_level.lower(), http=settings.http_parser,
                            server_header=settings.server_header,
                            # X-Forwarded-For names the client (fairness) only from IMDN_TRUSTED_PROXIES;
                            # uvicorn's default trusts loopback.
                            proxy_headers=bool(settings.trusted_proxies),
                            forwarded_allow_ips=settings.trusted_proxies or None,
                            # h11's own limit past ours, so that both parsers answer 431 at the same size
                            h11_max_incomplete_event_size=settings.max_header_bytes + H11_HEADROOM)
    config.load()
    config.http_protocol_class = with_header_limits(config.http_protocol_class, settings.header_timeout_s,
                                                    settings.max_header_bytes)
    server = DrainingServer(config, state)

    def stop() -> None:  # called from the event loop when the model pool cannot start
        server.should_exit = True

    app.state.on_fatal = stop
    # uvicorn re-raises a handled SIGTERM/SIGINT once it has drained, under the handlers found at
    # start; these swallow it, so a drained shutdown returns normally and exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    signal.signal(signal.SIGHUP, server.handle_exit)  # uvicorn leaves SIGHUP alone: it drains from here
    server.run(sockets=[sock] if sock is not None else None)
    # uvicorn leaves started=False if start-up (bad weights) failed: exit non-zero so orchestrators notice.
    return 0 if server.started and not state.startup_error else 1


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: model threads (PyTorch, ONNX Runtime) that are still in
    native code when Python finalises can abort the process ("terminate called without an active
    exception", exit 134) after a clean drain. Logs and output are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
