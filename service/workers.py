"""IMDN_WORKERS > 1: one port, several server processes, each with its own model replicas.

One Python process cannot feed a fast GPU: upload, decode, PNG encoding and HTTP share its GIL.
The supervisor (this module, the container's PID 1) binds the port, then starts the workers, each
a full `service.server.serve` on the shared listening socket; the kernel spreads connections
across them. Metrics go to per-worker files (prometheus_client multiprocess mode) that any
worker's /metrics, or the supervisor's IMDN_METRICS_PORT, sums. Each worker holds a flag in shared
memory: /readyz answers 200 only while every flag is up. SIGTERM/SIGINT lower all flags at once
and are passed on as SIGTERM, so every worker drains; the supervisor exits 0 when all drained.
A worker that dies on its own stops the others and the supervisor exits 1: the orchestrator
restarts the pod rather than this process guessing what went wrong.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import MutableSequence
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from service.config import Settings
from service.logs import configure_logging
from service.metrics import multiprocess_registry, serve_metrics
from service.server import exit_now, serve
from service.tuning import tune_malloc

log = logging.getLogger("service")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def worker_settings(settings: Settings) -> Settings:
    """Split the CPU threads between the workers: N workers x all cores would oversubscribe the CPU."""
    threads = max(1, (settings.threads or os.cpu_count() or 1) // settings.workers)
    return settings.model_copy(update={"threads": threads})


def run_worker(index: int, settings: Settings, host: str, port: int, sock: socket.socket,
               flags: MutableSequence[int]) -> None:
    """Entry point of a spawned worker (a fresh interpreter: it imports prometheus_client in multiprocess mode)."""
    tune_malloc()
    configure_logging(settings.log_level, settings.log_format)
    exit_now(serve(settings, host, port, sock, (index, flags)))  # no interpreter teardown: see exit_now


def supervise(settings: Settings, host: str, port: int) -> int:
    # Spawn, not fork: each worker starts clean (no inherited threads, CUDA state or metric values).
    context = multiprocessing.get_context("spawn")
    metrics_dir = tempfile.mkdtemp(prefix="imdn-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by the workers' prometheus_client at import
    try:
        sock = bind(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1
    # The supervisor serves IMDN_METRICS_PORT itself, from every worker's files.
    if settings.metrics_port and not serve_metrics(settings.metrics_port, host, multiprocess_registry(metrics_dir)):
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1
    flags = context.Array("b", settings.workers, lock=False)
    per_worker = worker_settings(settings)
    workers: list[BaseProcess] = []
    stopping = False

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        # A second Ctrl-C stops at once, as it does uvicorn; SIGTERM (Kubernetes) always drains.
        kill = signal.SIGKILL if stopping and sig == signal.SIGINT else signal.SIGTERM
        if not stopping:
            log.info("signal %d: draining %d workers (up to %.0f s)", sig, settings.workers,
                     settings.drain_timeout_s)
        stopping = True
        for i in range(len(flags)):
            flags[i] = 0  # every worker's /readyz turns 503 at once
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, kill)

    # Before the first worker starts: a signal during start-up must reach every worker too.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(settings.workers):
        if stopping:
            break
        process = context.Process(target=run_worker, name=f"imdn-worker-{index}",
                                  args=(index, per_worker, host, port, sock, flags))
        process.start()
        workers.append(process)
    # The workers hold their own copies; a listening copy here would queue connections no one accepts.
    sock.close()
    log.info("%d workers on %s:%d (pids %s), %d CPU threads each", settings.workers, host, port,
             ",".join(str(w.pid) for w in workers), per_worker.threads)
    failed = False
    try:
        running = list(workers)
        while running:
            done = multiprocessing.connection.wait([w.sentinel for w in running])
            for worker in [w for w in running if w.sentinel in done]:
                worker.join()
                running.remove(worker)
                if worker.pid is not None:  # its live* gauges (queue depth, in flight, ready) leave the sums
                    mark_process_dead(worker.pid, metrics_dir)
                # SIGTERM before a worker had set up its handlers: it was still starting, nothing was cut.
                if worker.exitcode not in (0, -signal.SIGTERM) or not stopping:
                    log.error("%s (pid %s) exited with %s%s", worker.name, worker.pid, worker.exitcode,
                              "" if stopping else ": stopping the others")
                    failed = True
                    if not stopping:
                        stop(signal.SIGTERM, None)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0
