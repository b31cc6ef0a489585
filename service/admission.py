"""Admission: which requests run, in what order, within how much memory, and where their images are decoded.

A request's body is read first (service/upload.py); then it takes a place (`admit`), its memory is estimated
from the image's header (model/memory.py) and it queues, undecoded, until a processing slot is free, its
memory fits within the budget, and its client's turn has come (`wait_turn`). Only then is it decoded, on a
pool of as many threads as there are slots (`decode`). Clients take turns round-robin (by API key, else by
address: uvicorn takes X-Forwarded-For only from IMDN_TRUSTED_PROXIES), and a client holding more than its
share of the places while another has fewer gives up its newest queued request to the newcomer (429).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from fastapi import Request

from service.config import Settings
from service.errors import NotReadyError, PayloadTooLargeError, QueueFullError, RateLimitedError
from service.metrics import Metrics
from service.security import offered_key

log = logging.getLogger("service")
T = TypeVar("T")
MB = 2**20
# cgroup v2, then v1; a value this large means no limit (v1 writes 2^63 rounded to a page).
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
NO_LIMIT = 2**60
# Of a worker's share of the container, what is kept back beside the measured baseline: the interpreter's
# and the allocator's growth under load, sockets, the response chunks in flight (a pod killed at its limit
# loses every request it holds, so the default errs low).
SHARE_KEPT_BACK = 0.10
# The least a derived budget may be: below it no ordinary image would be served; the log says why.
MIN_LIMIT = 256 * MB
UNSET = 2**62  # no budget yet: the pool is not warm, so no request is served
HEADER_THREADS = 2  # header parsing is bounded work (frames and scans counted up to their limits)
MAX_BUCKETS = 10_000  # clients remembered by the rate limit before the idle ones are forgotten


def cgroup_memory_limit() -> int | None:
    """The container's memory limit in bytes (cgroup v2 memory.max, else v1 limit_in_bytes); None if none."""
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < NO_LIMIT:
            return int(text)
        return None  # "max", or v1's no-limit value
    return None


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's resident memory now (/proc/self/statm)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def derived_memory_limit(settings: Settings, activations: int) -> int:
    """The memory budget for this process's requests: IMDN_MEMORY_LIMIT_MB if set, else the container's limit
    (or the machine's memory) divided among IMDN_WORKERS, less a tenth kept back, less the baseline: what
    this process holds now, models loaded and warm, and `activations`, what its replicas may take for tiles."""
    if settings.memory_limit_mb:
        return settings.memory_limit_mb * MB
    total = cgroup_memory_limit() or physical_memory()
    share = total // settings.workers
    baseline = resident_bytes() + activations
    limit = int(share * (1 - SHARE_KEPT_BACK)) - baseline
    if limit < MIN_LIMIT:
        log.warning("memory: a worker's share is %d MB and its baseline %d MB: requests get %d MB (set "
                    "IMDN_MEMORY_LIMIT_MB, fewer IMDN_WORKERS or a larger memory limit)",
                    share // MB, baseline // MB, MIN_LIMIT // MB)
        return MIN_LIMIT
    log.info("memory: %d MB for requests (share %d MB, baseline %d MB of which activations %d MB)",
             limit // MB, share // MB, baseline // MB, activations // MB)
    return limit


def client_of(request: Request, keyed: bool) -> str:
    """Whose request this is for fairness: its API key (a digest: the key itself is kept nowhere) where keys
    are configured, else its address (uvicorn has applied X-Forwarded-For from trusted proxies)."""
    if keyed:
        return "key:" + hashlib.sha256(offered_key(request.headers).encode()).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "unknown")


@dataclass(eq=False)
class Ticket:
    """One request's place, from its body's arrival to its response's end."""

    client: str
    need: int = 0  # estimated bytes (model/memory.py), reserved while it runs
    future: asyncio.Future[None] | None = None
    queued: bool = False
    granted: bool = False
    left: bool = False


@dataclass(eq=False)
class Admission:
    """`concurrency` requests run within `memory_limit` bytes, up to `queue_size` more wait (undecoded); the
    rest get 429 at once."""

    concurrency: int
    queue_size: int
    metrics: Metrics
    memory_limit: int = UNSET  # set once the pool is warm (derived_memory_limit)
    admitted: int = 0  # places taken: queued, decoding, running
    waiting: int = 0
    running: int = 0
    reserved: int = 0
    held: Counter[str] = field(default_factory=Counter)  # places per client
    queues: OrderedDict[str, deque[Ticket]] = field(default_factory=OrderedDict)  # in turn order
    pixel_rate: PixelRateLimit | None = None  # IMDN_RATE_LIMIT_PIXELS

    def __post_init__(self) -> None:
        self.capacity = self.concurrency + self.queue_size
        self.set_memory_limit(self.memory_limit)
        self.decoder = ThreadPoolExecutor(self.concurrency, thread_name_prefix="decode")
        self.header_reader = ThreadPoolExecutor(HEADER_THREADS, thread_name_prefix="header")

    def set_memory_limit(self, limit: int) -> None:
        self.memory_limit = limit
        self.metrics.memory_limit.set(0 if limit == UNSET else limit)

    # --- places ------------------------------------------------------------------------

    def share(self, client: str) -> int:
        """A client's fair share of the places, among the clients that hold any and this one."""
        clients = len(self.held) + (client not in self.held)
        return max(1, self.capacity // clients)

    def _displaceable(self, client: str) -> Ticket | None:
        """The newest queued request of the client holding the most places, if it holds more than its share
        and `client` less than its own: a place for `client` when all are taken."""
        share = self.share(client)  # with `client` counted among those sharing
        if self.held[client] >= share:
            return None
        greedy = max((c for c, queue in self.queues.items() if queue), key=lambda c: self.held[c], default=None)
        if greedy is None or self.held[greedy] <= share:
            return None
        return self.queues[greedy][-1]

    def check(self, client: str) -> None:
        """Refuse a request before its body is read if it would be refused once it has arrived."""
        if self.admitted >= self.capacity and self._displaceable(client) is None:
            self.metrics.rejected.labels("queue_full").inc()
            # A rough hint: a slot frees up about every few seconds under load.
            raise QueueFullError(f"{self.admitted} requests are already queued or running; retry shortly",
                                 headers={"Retry-After": "2"})

    def admit(self, client: str) -> Ticket:
        """Take a place for a request whose body has arrived (making one from a greedy client's), or refuse."""
        self.check(client)
        if self.admitted >= self.capacity:
            victim = self._displaceable(client)
            assert victim is not None and victim.future is not None
            self.metrics.rejected.labels("displaced").inc()
            self.leave(victim)  # its place is free now; its handler answers 429 when it wakes
            victim.future.set_exception(QueueFullError(
                "another client's request took this queue place: each client gets its share of the queue while "
                "others wait; retry shortly", headers={"Retry-After": "2"}))
        ticket = Ticket(client)
        self.admitted += 1
        self.held[client] += 1
        self.metrics.in_flight.set(self.admitted)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """The request is over (served, refused, cancelled or gone): free its place, its slot and its memory,
        and let the next waiter in. Safe to call more than once."""
        if ticket.left:
            return
        ticket.left = True
        self._unqueue(ticket)
        if ticket.granted:
            self.running -= 1
            self.reserved -= ticket.need
            self.metrics.memory_reserved.set(self.reserved)
        self.admitted -= 1
        self.held[ticket.client] -= 1
        if self.held[ticket.client] <= 0:
            del self.held[ticket.client]
        self.metrics.in_flight.set(self.admitted)
        self._dispatch()

    def spend_pixels(self, ticket: Ticket, pixels: int) -> dict[str, str]:
        """Charge the request's output pixels to its client's rate limit, if there is one -> its headers."""
        if self.pixel_rate is None:
            return {}
        try:
            return self.pixel_rate.spend(ticket.client, pixels)
        except RateLimitedError:
            self.metrics.rejected.labels("rate_limit").inc()
            raise

    # --- the queue ---------------------------------------------------------------------

    async def wait_turn(self, ticket: Ticket, need: int, timeout: float) -> None:
        """Queue until a slot and `need` bytes are free and it is this client's turn; 413 if `need` is more
        than the whole budget, 503 if the turn does not come within `timeout` s. Whoever awaits this must
        leave() the ticket whatever happens (a cancelled wait leaves the queue there, at once)."""
        if need > self.memory_limit:
            self.metrics.rejected.labels("memory").inc()
            raise PayloadTooLargeError(
                f"this image needs about {need / MB:,.0f} MB to decode, upscale and encode, more than this "
                f"server's whole memory budget for requests ({self.memory_limit / MB:,.0f} MB, "
                "IMDN_MEMORY_LIMIT_MB): send a smaller image, a smaller scale, or PNG output")
        ticket.need = need
        ticket.future = asyncio.get_running_loop().create_future()
        self.queues.setdefault(ticket.client, deque()).append(ticket)
        ticket.queued = True
        self.waiting += 1
        self._dispatch()
        try:
            await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
        except TimeoutError as exc:
            self.metrics.rejected.labels("queue_timeout").inc()
            raise NotReadyError("no processing slot became free in time; retry later",
                                headers={"Retry-After": "5"}) from exc
        finally:
            self._unqueue(ticket)
            self.metrics.queue_depth.set(self.waiting)

    def _unqueue(self, ticket: Ticket) -> None:
        if not ticket.queued:
            return
        ticket.queued = False
        self.waiting -= 1
        queue = self.queues.get(ticket.client)
        if queue is not None:
            queue.remove(ticket)
            if not queue:
                del self.queues[ticket.client]
        self.metrics.queue_depth.set(self.waiting)

    def _dispatch(self) -> None:
        """Grant turns: the client first in turn order, if a slot is free and its oldest request's memory
        fits (else everyone waits for memory: a large request is never passed over for ever); that client
        then goes to the back."""
        while self.running < self.concurrency and self.queues:
            client, queue = next(iter(self.queues.items()))
            ticket = queue[0]
            if self.reserved + ticket.need > self.memory_limit:
                break
            self._unqueue(ticket)
            if client in self.queues:
                self.queues.move_to_end(client)
            ticket.granted = True
            self.running += 1
            self.reserved += ticket.need
            self.metrics.memory_reserved.set(self.reserved)
            assert ticket.future is not None
            if not ticket.future.done():
                ticket.future.set_result(None)
        self.metrics.queue_depth.set(self.waiting)

    # --- the bounded pools ------------------------------------------------------------

    async def read_header(self, fn: Callable[..., T], *args: object) -> T:
        """Run a header reader on its own small pool (never asyncio's default executor)."""
        return await asyncio.get_running_loop().run_in_executor(self.header_reader, fn, *args)

    async def decode(self, fn: Callable[..., T], *args: object) -> T:
        """Run a decode on the pool of `concurrency` threads: only granted requests decode."""
        return await asyncio.get_running_loop().run_in_executor(self.decoder, fn, *args)

    def close(self) -> None:
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self.header_reader.shutdown(wait=False, cancel_futures=True)


@dataclass(eq=False)
class PixelRateLimit:
    """IMDN_RATE_LIMIT_PIXELS: a bucket per client of `rate` output pixels a second, holding up to `window_s`
    seconds of them. A request takes its output's pixels from its client's bucket, or gets 429 with the wait
    in Retry-After; one larger than the whole bucket goes when the bucket is full (and leaves it owing).
    Responses carry the IETF draft's RateLimit-Policy and RateLimit headers."""

    rate: float
    window_s: float
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # client -> (pixels left, when)

    @property
    def capacity(self) -> float:
        return self.rate * self.window_s

    def _left(self, client: str, now: float) -> float:
        left, then = self.buckets.get(client, (self.capacity, now))
        return min(self.capacity, left + (now - then) * self.rate)

    def headers(self, left: float) -> dict[str, str]:
        to_full = max(0, math.ceil((self.capacity - left) / self.rate))
        return {"RateLimit-Policy": f'"pixels";q={int(self.capacity)};w={math.ceil(self.window_s)}',
                "RateLimit": f'"pixels";r={max(0, int(left))};t={to_full}'}

    def spend(self, client: str, pixels: int) -> dict[str, str]:
        """Take `pixels` from the client's bucket -> the RateLimit headers; or raise 429 with them."""
        now = self.clock()
        left = self._left(client, now)
        if left < min(pixels, self.capacity):
            wait = math.ceil((min(pixels, self.capacity) - left) / self.rate)
            raise RateLimitedError(f"this client's rate limit is {self.rate:,.0f} output pixels a second "
                                   f"(IMDN_RATE_LIMIT_PIXELS); this image needs {pixels:,}: retry in {wait} s",
                                   headers={"Retry-After": str(max(1, wait)), **self.headers(left)})
        if len(self.buckets) > MAX_BUCKETS:  # forget the clients whose buckets have filled up again
            self.buckets = {c: b for c, b in self.buckets.items() if self._left(c, now) < self.capacity}
        self.buckets[client] = (left - pixels, now)
        return self.headers(left - pixels)
