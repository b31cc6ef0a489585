"""Helpers shared by the engine's, tiles' and parts' tests: a runner that records calls, the policy they assume."""

from __future__ import annotations

import numpy as np
import torch

from model.backends import TorchRunner

WHOLE_BUDGET = 2**34  # big enough that every test image is one tile
# Upscaler keywords for the paper's clean-image policy (x2/x3/x4 at their scales, IMDN_AS otherwise) and
# refined statistics on every tiled pass, which these tests were written for; the defaults are the service's.
CLEAN_AS = {"content": "clean", "any_scale": "as", "refine_stats": True}


def gradient(height: int, width: int, channels: int, dtype=np.uint8) -> np.ndarray:
    """A (H,W,C) pattern with distinct, varied channels."""
    top = np.iinfo(dtype).max
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 3 + y * 5) % 97 / 96
    planes = [base, base[::-1], base[:, ::-1], 1 - base][:channels]
    return (np.stack(planes, axis=-1) * top).round().astype(dtype)


class SpyRunner:
    """Delegates to a runner and records every network call's batch shape and CCA statistics."""

    def __init__(self, inner: TorchRunner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, tuple[int, ...], torch.Tensor | None]] = []

    def __call__(self, name, batch, cca_contrast=None):
        self.calls.append((name, tuple(batch.shape), None if cca_contrast is None else cca_contrast.clone()))
        return self.inner(name, batch, cca_contrast)

    def cca_moments(self, name, windows, mask, cca_contrast=None):
        return self.inner.cca_moments(name, windows, mask, cca_contrast)

    def run_part(self, name, kind, block, *inputs):
        self.calls.append((f"{name}:{kind}{block}", tuple(inputs[0].shape), None))
        return self.inner.run_part(name, kind, block, *inputs)
