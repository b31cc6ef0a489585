"""The Runner contract's helpers: what counts as out of memory, and the one-at-a-time retry."""

from __future__ import annotations

import pytest
import torch

from model.runner import batched_or_singly, is_out_of_memory


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory"), MemoryError(),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: "
                                              "can't allocate memory: you tried to allocate 123 bytes")])
def test_out_of_memory_kinds(exc):
    assert is_out_of_memory(exc)


@pytest.mark.parametrize("exc", [RuntimeError("shape mismatch"), ValueError("can't allocate memory"), OSError()])
def test_other_errors_are_not_out_of_memory(exc):
    assert not is_out_of_memory(exc)


def test_batched_or_singly_runs_once_when_it_fits():
    calls = []

    def run(part: slice) -> torch.Tensor:
        calls.append((part.start, part.stop))
        return torch.arange(part.start, part.stop)

    assert [t.tolist() for t in batched_or_singly(3, run)] == [[0, 1, 2]]
    assert calls == [(0, 3)]


def test_batched_or_singly_splits_a_batch_that_runs_out_of_memory():
    def run(part: slice) -> torch.Tensor:
        if part.stop - part.start > 1:
            raise MemoryError
        return torch.tensor([part.start])

    assert [t.tolist() for t in batched_or_singly(3, run)] == [[0], [1], [2]]


def test_batched_or_singly_passes_other_errors_and_single_items_through():
    def broken(part: slice) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        batched_or_singly(3, broken)

    def no_memory(part: slice) -> torch.Tensor:
        raise MemoryError

    with pytest.raises(MemoryError):
        batched_or_singly(1, no_memory)
