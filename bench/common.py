"""Shared helpers for the benchmark scripts: weights, FLOPs, interleaved timing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from model.backends import load_models
from model.imdn import IMDN, IMDN_AS, build_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def models_for(weights: str, names: list[str]) -> dict[str, IMDN | IMDN_AS]:
    """'random' = freshly initialised (speed only), else a weights spec for load_models."""
    if weights == "random":
        torch.manual_seed(0)
        return {n: build_model(n).eval() for n in names}
    return load_models(names, weights)


def conv_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds x 2 of every convolution for input x (the network's arithmetic, as papers count it)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, nn.Conv2d)
        k = module.kernel_size[0] * module.kernel_size[1]
        total += 2 * output.numel() * module.in_channels // module.groups * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total


def interleaved(candidates: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each candidate once per round, in turn, so machine noise hits all of them alike."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(baseline: list[float], other: list[float]) -> float:
    """Median over rounds of baseline/other: > 1 means `other` is faster."""
    return statistics.median(b / o for b, o in zip(baseline, other, strict=True))
