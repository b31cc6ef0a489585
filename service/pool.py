"""The warm model pool: replicas on devices, and a batching queue that knows nothing about HTTP.

Engine threads call the pool like a Runner (`pool(name, batch)`); the call is
queued, grouped with compatible work from other requests (same model, same tile
shape) up to ``max_batch`` tiles or ``max_wait`` seconds, run on the first free
replica, and each caller gets its own slice back. If a batch fails, every caller
in it gets the exception; the replica's thread carries on.

Callers that register with ``in_use()`` (one per request) let the pool skip the wait
when only one of them is active: a lone request's tiles already come batched, so
waiting for others could only add latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from model.backends import OnnxRunner, TorchRunner
from service.tuning import trim_malloc

log = logging.getLogger("service.pool")

Backend = TorchRunner | OnnxRunner
# A replica idle this long hands its backend's cached buffers back (ONNX Runtime's arena): a busy one keeps
# them, so the tiles of a request reuse memory instead of having the kernel fault in fresh pages each run.
IDLE_RELEASE_S = 1.0


ABANDON_POLL_S = 0.1  # how often a waiting caller looks at its cancel flag


class JobAbandonedError(CancelledError):
    """The caller stopped waiting for its job (its cancel flag was set)."""


def wait(future: Future[Any], abandon: threading.Event | None) -> Any:
    """The job's result; once `abandon` is set, cancel the job (a queued one never runs) and raise."""
    while abandon is not None:
        try:
            return future.result(ABANDON_POLL_S)
        except FutureTimeout:
            if abandon.is_set():
                future.cancel()  # a running job cannot be: it finishes and its result is dropped
                raise JobAbandonedError("the caller no longer waits for this job") from None
    return future.result()


@dataclass
class Job:
    """One caller's tiles for one network call, or (`call` set) any other backend call, never merged."""

    model: str
    batch: torch.Tensor
    contrast: torch.Tensor | None
    future: Future[Any] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    call: Callable[[Backend], Any] | None = None

    @property
    def key(self) -> tuple[object, ...]:
        return (self.model, tuple(self.batch.shape[1:]), self.contrast is not None, self.call is not None)


@dataclass
class Replica:
    name: str
    backend: Backend
    thread: threading.Thread | None = None
    dead: bool = False
    batches: int = 0
    failures: int = 0
    holding_memory: bool = False  # has run since it last released its backend's cached buffers


class ModelPool:
    """Replicas behind one queue; callable as the engine's Runner."""

    def __init__(self, backends: list[tuple[str, Backend]], max_batch: int = 4, max_wait_s: float = 0.002,
                 on_batch: Callable[[str, int, float], None] | None = None) -> None:
        if not backends:
            raise ValueError("a pool needs at least one replica")
        self.replicas = [Replica(name, backend) for name, backend in backends]
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._users = 0  # registered callers now active (in_use)
        for replica in self.replicas:
            replica.thread = threading.Thread(target=self._replica_loop, args=(replica,),
                                              name=f"replica-{replica.name}", daemon=True)
            replica.thread.start()

    # --- Runner protocol --------------------------------------------------------------

    # `abandon`: the caller's cancel flag. Once it is set the caller stops waiting and its job, if still queued,
    # is dropped: a request that ended frees its tiles (and the picture its thread holds) at once, instead of
    # after every job it had queued has run for nobody.

    def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None, *,
                 abandon: threading.Event | None = None) -> torch.Tensor:
        return wait(self.submit(Job(name, batch, cca_contrast)), abandon)

    def cca_moments(self, name: str, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None, *,
                    abandon: threading.Event | None = None) -> torch.Tensor:
        job = Job(name, windows, cca_contrast, call=lambda backend: backend.cca_moments(name, windows, mask,
                                                                                        cca_contrast))
        return wait(self.submit(job), abandon)

    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor,
                 abandon: threading.Event | None = None) -> tuple[torch.Tensor, ...]:
        job = Job(name, inputs[0], None, call=lambda backend: backend.run_part(name, kind, block, *inputs))
        return wait(self.submit(job), abandon)

    # --- queue -----------------------------------------------------------------------

    def submit(self, job: Job) -> Future[Any]:
        with self._cond:
            if self._closed:
                raise RuntimeError("the model pool is shut down")
            if all(r.dead for r in self.replicas):
                raise RuntimeError("every replica has stopped")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Count one caller (a request) as active while the block runs."""
        with self._cond:
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1

    @property
    def pending(self) -> int:
        return len(self._queue)

    def alive(self) -> bool:
        """True while every replica's thread is running."""
        return not self._closed and all(r.thread is not None and r.thread.is_alive() for r in self.replicas)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for replica in self.replicas:
            if replica.thread is not None:
                replica.thread.join(timeout=5)
        for job in self._queue:
            job.future.set_exception(RuntimeError("the model pool shut down"))

    def _take_group(self, idle_timeout: float | None = None) -> list[Job] | None:
        """Block for the first job, then gather compatible ones until the batch is full or max_wait passes.

        Returns None once the pool is closed, and an empty group if no job came within `idle_timeout`.
        """
        with self._cond:
            while not self._queue and not self._closed:
                if not self._cond.wait(idle_timeout):
                    return []
            if self._closed:
                return None
            first = self._queue.popleft()
            group, size = [first], first.batch.shape[0]
            if first.call is not None or self._users == 1:
                return group  # a call is never merged; a lone caller has no one to wait for
            deadline = time.perf_counter() + self.max_wait_s
            while size < self.max_batch:
                match = next((j for j in self._queue if j.key == first.key
                              and size + j.batch.shape[0] <= self.max_batch), None)
                if match is not None:
                    self._queue.remove(match)
                    group.append(match)
                    size += match.batch.shape[0]
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return group

    def _replica_loop(self, replica: Replica) -> None:
        """A replica's thread: take a group of jobs, run it, repeat; idle, hand back cached memory."""
        while True:
            group = self._take_group(IDLE_RELEASE_S if replica.holding_memory else None)
            if group is None:
                return
            if not group:  # idle: between the tiles of a request there is never a whole second
                replica.holding_memory = False
                try:
                    replica.backend.release_memory()
                except Exception as exc:
                    log.warning("replica %s: could not release memory: %s", replica.name, exc)
                trim_malloc()  # and what the requests' own buffers left in the C heap
                continue
            replica.holding_memory = True
            group = [job for job in group if job.future.set_running_or_notify_cancel()]
            if not group:
                continue
            try:
                self._run(replica, group)
            except Exception as exc:  # every waiter must hear about it; the thread lives on
                replica.failures += 1
                log.warning("replica %s: batch of %s failed: %s", replica.name, group[0].model, exc)
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(exc)
            except BaseException:
                # The thread itself is going (interpreter exit, SystemExit): fail the waiters, and
                # alive() turns False so /healthz and /readyz report it.
                log.error("replica %s: its thread stopped", replica.name)
                replica.dead = True
                stranded = list(group)
                if all(r.dead for r in self.replicas):  # nobody left to run what is queued
                    with self._cond:
                        stranded += list(self._queue)
                        self._queue.clear()
                for job in stranded:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError(f"replica {replica.name} stopped"))
                raise

    def _run(self, replica: Replica, group: list[Job]) -> None:
        first = group[0]
        started = time.perf_counter()
        results: list[Any]  # one per job of the group
        if first.call is not None:
            results, tiles = [first.call(replica.backend)], 0
        else:
            batch = torch.cat([job.batch for job in group]) if len(group) > 1 else first.batch
            contrast = None
            if first.contrast is not None:
                contrast = torch.cat([job.contrast for job in group if job.contrast is not None])
            out = replica.backend(first.model, batch, contrast)
            results, tiles = list(out.split([job.batch.shape[0] for job in group])), batch.shape[0]
        replica.batches += 1
        if self.on_batch is not None:
            self.on_batch(first.model, tiles, time.perf_counter() - started)
        for job, result in zip(group, results, strict=True):
            job.future.set_result(result)
