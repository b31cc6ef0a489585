"""The Runner contract between the engine and whatever runs the networks, and out-of-memory retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class Runner(Protocol):
    """Runs the networks; the service puts its batching pool behind this."""

    def __call__(self, name: str, batch: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        """(N,3,h,w) float32 CPU in [0,1], optional (N,6,64) CCA statistics -> (N,3,s*h,s*w) float32 CPU."""
        ...

    def cca_moments(self, name: str, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        """Windows of one image and their valid-feature mask -> (6,3,64) CCA moments (see IMDN.cca_moments)."""
        ...

    def run_part(self, name: str, kind: str, block: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One part of IMDN_AS over a band (model.imdn.NetworkPart): CPU tensors in, CPU tensors out."""
        ...


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator failing (RuntimeError/MemoryError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def batched_or_singly(count: int, run: Callable[[slice], torch.Tensor]) -> list[torch.Tensor]:
    """run(slice(0, count)) as one call; if that runs out of memory, run each item's slice on its own."""
    try:
        return [run(slice(0, count))]
    except Exception as exc:
        if count == 1 or not is_out_of_memory(exc):
            raise
    return [run(slice(i, i + 1)) for i in range(count)]
