"""IMDN_WORKERS > 1: one port, several server processes, each with its own model replicas.

One Python process cannot feed a fast GPU: upload, decode, PNG encoding and HTTP share its GIL.
The supervisor (this module, the container's PID 1) binds the port, then starts the workers, each
a full `service.server.serve` on the shared listening socket; the kernel spreads connections
across them. Metrics go to per-worker files (prometheus_client multiprocess mode) that any
worker's /metrics, or the supervisor's IMDN_METRICS_PORT, sums. Each worker holds a flag in shared
memory: /readyz answers 200 only while every flag is up. SIGTERM/SIGINT/SIGHUP lower all flags at
once and are passed on as SIGTERM, so every worker drains; the supervisor exits 0 when all drained
and removes the metrics directory. A worker that dies on its own stops the others and the supervisor
exits 1: the orchestrator restarts the pod rather than this process guessing what went wrong.
A supervisor that dies without draining (SIGKILL, the OOM killer) takes its workers with it: each asks
the kernel for SIGTERM when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere a thread watches the
parent), drains, frees the port and removes its metric files, the last one the directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import MutableSequence
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client.multiprocess import mark_process_dead

from service.config import Settings
from service.logs import configure_logging
from service.metrics import multiprocess_registry, serve_metrics
from service.server import DRAIN_SIGNALS, exit_now, serve, signal_name
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


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 1.0


def exit_with_parent(parent: int) -> None:
    """SIGTERM (a drain) to this process when `parent` dies, however it dies: never an orphan on the port."""
    asked = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            asked = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    if not asked:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(PARENT_POLL_S)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="imdn-parent-watch", daemon=True).start()
    elif os.getppid() != parent:  # it died before the request above: the kernel will not send it now
        os.kill(os.getpid(), signal.SIGTERM)


def remove_own_metrics(metrics_dir: str) -> None:
    """An orphaned worker's exit: its metric files go, and the directory with the last of them."""
    suffix = f"_{os.getpid()}.db"
    with contextlib.suppress(OSError):
        for name in os.listdir(metrics_dir):
            if name.endswith(suffix):
                os.unlink(os.path.join(metrics_dir, name))
        os.rmdir(metrics_dir)  # fails while another worker's files are left: that worker removes it


def run_worker(index: int, settings: Settings, host: str, port: int, sock: socket.socket,
               flags: MutableSequence[int]) -> None:
    """Entry point of a spawned worker (a fresh interpreter: it imports prometheus_client in multiprocess mode)."""
    parent = multiprocessing.parent_process()
    supervisor = parent.pid if parent is not None and parent.pid is not None else os.getppid()
    exit_with_parent(supervisor)
    tune_malloc()
    configure_logging(settings.log_level, settings.log_format)
    code = serve(settings, host, port, sock, (index, flags))
    if os.getppid() != supervisor and (metrics_dir := os.environ.get("PROMETHEUS_MULTIPROC_DIR")):
        remove_own_metrics(metrics_dir)  # no supervisor is left to remove the directory
    exit_now(code)  # no interpreter teardown: see exit_now


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
            log.info("signal %s: draining %d workers (up to %.0f s)", signal_name(sig), settings.workers,
                     settings.drain_timeout_s)
        stopping = True
        for i in range(len(flags)):
            flags[i] = 0  # every worker's /readyz turns 503 at once
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, kill)

    # Before the first worker starts: a signal during start-up must reach every worker too.
    for sig in DRAIN_SIGNALS:
        signal.signal(sig, stop)
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
