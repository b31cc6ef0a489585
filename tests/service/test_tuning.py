"""Process-wide start-up tuning (service/tuning.py): glibc's allocator, OpenMP's idle threads."""

from __future__ import annotations

import ctypes
import os

import service.tuning as entry


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_malloc_tuned_unless_the_environment_says(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    for variable in entry.MALLOC_SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    entry.tune_malloc()
    assert libc.calls == [(entry.M_ARENA_MAX, 1), (entry.M_MMAP_THRESHOLD, 8 * 2**20),
                          (entry.M_TRIM_THRESHOLD, 32 * 2**20)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the operator's setting wins
    entry.tune_malloc()
    assert libc.calls[3:] == [(entry.M_MMAP_THRESHOLD, 8 * 2**20), (entry.M_TRIM_THRESHOLD, 32 * 2**20)]


def test_no_glibc_is_fine(monkeypatch):
    def missing(name: str) -> None:
        raise OSError(f"{name}: not found")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    entry.tune_malloc()  # nothing to do, nothing raised


def test_openmp_threads_sleep_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    entry.set_openmp_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the operator's setting wins
    entry.set_openmp_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
