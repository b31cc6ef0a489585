"""python -m service [--host H] [--port P]: serve with uvicorn; everything else comes from IMDN_* settings."""

from __future__ import annotations

import argparse
import ctypes
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import MutableSequence
from types import FrameType

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. The ONNX Runtime backend
# leaves torch only the glue (crops, resizes, clamps), whose small parallel regions would otherwise
# spin both cores between them; measured on 2 shared cores (bench/scaling.py): 2-5x less CPU time
# for small x2.5 requests. The operator's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import uvicorn  # noqa: E402

from service.app import create_app  # noqa: E402
from service.config import Settings, get_settings  # noqa: E402
from service.connections import with_header_timeout  # noqa: E402
from service.logs import configure_logging  # noqa: E402
from service.metrics import serve_metrics  # noqa: E402
from service.state import ServiceState  # noqa: E402

log = logging.getLogger("service")

# Past the drain deadline, how long uvicorn still waits for connections before cancelling their tasks.
DRAIN_BACKSTOP_S = 5.0
# glibc's mallopt parameter numbers (malloc.h) and the values the service sets, by their environment names.
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": (M_ARENA_MAX, 1), "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, 8 * 2**20),
                   "MALLOC_TRIM_THRESHOLD_": (M_TRIM_THRESHOLD, 32 * 2**20)}


def tune_malloc() -> None:
    """glibc's allocator for this workload (glibc only; a setting in the environment wins).

    - One arena for all threads (MALLOC_ARENA_MAX=1): a request's tiles are allocated and freed
      across the pool, band and encoder threads; with an arena per thread, freed pages sit in one
      arena while another asks the kernel for fresh ones (measured: 256x256 -> x4 requests about 8%
      slower, bench/service.py overhead).
    - Blocks of 8 MB and more straight from the kernel, and back to it when freed
      (MALLOC_MMAP_THRESHOLD_): by default glibc raises that threshold up to 32 MB as large blocks
      are freed, and the band-sized buffers of a large image then stay in the heap, fragmented
      (measured: 64 MP through IMDN_AS peaked 170 MB higher, bench/engine_memory.py).
    - Up to 32 MB of free heap kept (MALLOC_TRIM_THRESHOLD_): a fixed mmap threshold leaves the trim
      threshold at 128 KB, and the encoder's buffers were then faulted in afresh for every request
      (256x256 -> x4: 24 ms of encoding instead of 11, bench/service.py overhead).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for variable, (parameter, value) in MALLOC_SETTINGS.items():
        if variable not in os.environ:
            libc.mallopt(parameter, value)


class DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, report not-ready first, then let uvicorn finish in-flight requests and exit."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.service_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.service_state.draining:
            log.info("signal %d: draining (up to %g s for in-flight requests; then those not streaming get 503 "
                     "and streams are cut)", sig, self.service_state.settings.drain_timeout_s)
        self.service_state.start_drain()
        if self.service_state.worker_flags is not None:
            # A worker gets Ctrl-C's SIGINT and the supervisor's SIGTERM: both mean drain, never force-exit.
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
                            server_header=settings.server_header)
    config.load()
    config.http_protocol_class = with_header_timeout(config.http_protocol_class, settings.header_timeout_s)
    server = DrainingServer(config, state)

    def stop() -> None:  # called from the event loop when the model pool cannot start
        server.should_exit = True

    app.state.on_fatal = stop
    # uvicorn re-raises a handled SIGTERM/SIGINT once it has drained, under the handlers found at
    # start; these swallow it, so a drained shutdown returns normally and exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    server.run(sockets=[sock] if sock is not None else None)
    # uvicorn leaves started=False if start-up (bad weights) failed: exit non-zero so orchestrators notice.
    return 0 if server.started and not state.startup_error else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    tune_malloc()
    try:
        settings = get_settings()
    except Exception as exc:  # noqa: BLE001 - a settings error is the operator's to fix: say what, exit
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from service.workers import supervise

        return supervise(settings, args.host, args.port)
    return serve(settings, args.host, args.port)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: model threads (PyTorch, ONNX Runtime) that are still in
    native code when Python finalises can abort the process ("terminate called without an active
    exception", exit 134) after a clean drain. Logs and output are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
