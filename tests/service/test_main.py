"""The process entry point's start-up tuning."""

from __future__ import annotations

import ctypes

import service.__main__ as entry


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_one_malloc_arena_unless_the_environment_says(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    entry.limit_malloc_arenas()
    assert libc.calls == [(entry.M_ARENA_MAX, 1)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the operator's setting wins
    entry.limit_malloc_arenas()
    assert len(libc.calls) == 1


def test_no_glibc_is_fine(monkeypatch):
    def missing(name: str) -> None:
        raise OSError(f"{name}: not found")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    entry.limit_malloc_arenas()  # nothing to do, nothing raised

