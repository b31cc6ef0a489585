"""service/admission.py on its own: places, turns, memory and the derived limit (the whole service under
attack is tested on real processes in tests/reliability/test_admission.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.requests import Request

from service import admission as admission_module
from service.admission import (
    Admission,
    PixelRateLimit,
    Ticket,
    cgroup_memory_limit,
    client_of,
    derived_memory_limit,
)
from service.config import Settings
from service.errors import NotReadyError, PayloadTooLargeError, QueueFullError, RateLimitedError
from service.metrics import Metrics

MB = 2**20
pytestmark = pytest.mark.anyio


def make(concurrency: int = 1, queue_size: int = 3, memory_mb: int = 1000) -> Admission:
    return Admission(concurrency, queue_size, Metrics(), memory_limit=memory_mb * MB)


async def queued(admission: Admission, client: str, need_mb: int = 1) -> tuple[Ticket, asyncio.Task[None]]:
    ticket = admission.admit(client)
    task = asyncio.create_task(admission.wait_turn(ticket, need_mb * MB, 30))
    await asyncio.sleep(0)
    return ticket, task


async def test_clients_take_turns() -> None:
    admission = make(queue_size=5)
    first, running = await queued(admission, "a")
    await running
    a2, _ = await queued(admission, "a")
    a3, _ = await queued(admission, "a")
    b1, _ = await queued(admission, "b")
    admission.leave(first)  # a2 was queued before b1
    assert a2.granted and not b1.granted
    admission.leave(a2)  # now b goes before a's third
    assert b1.granted and not a3.granted
    for ticket in (a3, b1):
        admission.leave(ticket)
    assert (admission.admitted, admission.waiting, admission.running, admission.reserved) == (0, 0, 0, 0)


async def test_memory_waits_in_turn_and_413_past_the_whole_budget() -> None:
    admission = make(concurrency=3, memory_mb=1000)
    big, big_task = await queued(admission, "a", 600)
    await big_task
    second, _ = await queued(admission, "b", 600)  # a slot is free, the memory is not
    small, _ = await queued(admission, "c", 10)  # fits, but waits its turn behind b
    assert not second.granted and not small.granted
    admission.leave(big)
    assert second.granted and small.granted and admission.reserved == 610 * MB
    with pytest.raises(PayloadTooLargeError, match="IMDN_MEMORY_LIMIT_MB"):
        await admission.wait_turn(admission.admit("d"), 1001 * MB, 30)


async def test_a_greedy_client_gives_a_queued_place_to_a_newcomer() -> None:
    admission = make(concurrency=1, queue_size=3)  # 4 places
    tickets = [await queued(admission, "greedy") for _ in range(4)]
    with pytest.raises(QueueFullError):
        admission.check("greedy")
    admission.admit("polite")  # greedy holds 4 of 4, its share is 2: its newest queued request goes
    with pytest.raises(QueueFullError, match="share"):
        await tickets[-1][1]
    assert admission.admitted == 4 and admission.held == {"greedy": 3, "polite": 1}


async def test_a_cancelled_wait_leaves_the_queue_and_a_granted_one_gives_its_slot_back() -> None:
    admission = make(concurrency=1)
    first, first_task = await queued(admission, "a")
    await first_task
    waiting, task = await queued(admission, "b")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.waiting == 0
    admission.leave(waiting)
    admission.leave(waiting)  # twice: nothing more
    assert admission.admitted == 1
    admission.leave(first)
    assert (admission.admitted, admission.running, admission.reserved) == (0, 0, 0)


async def test_no_turn_in_time_is_503() -> None:
    admission = make(concurrency=1)
    first, task = await queued(admission, "a")
    await task
    with pytest.raises(NotReadyError):
        await admission.wait_turn(admission.admit("b"), MB, 0.05)


def test_the_limit_comes_from_the_cgroup_per_worker_less_the_baseline(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    v2 = tmp_path / "memory.max"
    monkeypatch.setattr(admission_module, "CGROUP_LIMITS", (v2, tmp_path / "v1"))
    v2.write_text("max\n")
    assert cgroup_memory_limit() is None
    v2.write_text(f"{8 * 1024 * MB}\n")
    assert cgroup_memory_limit() == 8 * 1024 * MB
    monkeypatch.setattr(admission_module, "resident_bytes", lambda: 500 * MB)
    settings = Settings(_env_file=None, workers=2)  # type: ignore[call-arg]
    assert derived_memory_limit(settings, 640 * MB) == int(4096 * MB * 0.9) - 1140 * MB
    assert derived_memory_limit(Settings(_env_file=None, workers=8), 640 * MB) == 256 * MB  # type: ignore[call-arg]
    assert derived_memory_limit(Settings(_env_file=None, memory_limit_mb=300), 0) == 300 * MB  # type: ignore[call-arg]


def test_the_pixel_rate_limit_refills_and_tells_when() -> None:
    now = [0.0]
    limit = PixelRateLimit(rate=100, window_s=10, clock=lambda: now[0])  # 1000 pixels at once
    assert limit.spend("a", 600) == {"RateLimit-Policy": '"pixels";q=1000;w=10', "RateLimit": '"pixels";r=400;t=6'}
    with pytest.raises(RateLimitedError) as refused:
        limit.spend("a", 600)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "2"
    assert limit.spend("b", 600)["RateLimit"] == '"pixels";r=400;t=6'  # another client's bucket
    now[0] = 2.0
    assert limit.spend("a", 600)["RateLimit"] == '"pixels";r=0;t=10'
    now[0] = 20.0
    limit.spend("a", 5000)  # larger than the bucket: goes when it is full, and leaves it owing
    with pytest.raises(RateLimitedError):
        limit.spend("a", 1)


def test_clients_are_told_apart_by_key_digest_else_address() -> None:
    def request(address: str, **headers: str) -> Request:
        raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
        return Request({"type": "http", "headers": raw, "client": (address, 5000)})

    keyed = client_of(request("10.0.0.1", x_api_key="secret-one"), keyed=True)
    assert keyed == client_of(request("10.0.0.2", authorization="Bearer secret-one"), keyed=True)
    assert "secret" not in keyed and keyed != client_of(request("10.0.0.1", x_api_key="secret-two"), keyed=True)
    # Without keys, the address uvicorn gives (X-Forwarded-For only from IMDN_TRUSTED_PROXIES): the header alone
    # changes nothing.
    assert client_of(request("10.0.0.1", x_forwarded_for="198.51.100.7"), keyed=False) == "addr:10.0.0.1"
