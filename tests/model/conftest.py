"""Shared fixtures for the model tests: ../shared paths, single-threaded torch, random models, synthetic images."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.samples import smooth_image

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"

if str(REPO) not in sys.path:  # `pytest tests/model` without the package installed
    sys.path.insert(0, str(REPO))


def _shared_path(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_dir():
        pytest.skip(f"needs ../shared: {path} is absent")
    return path


@pytest.fixture(scope="session")
def benchmarks() -> Path:
    """../shared/data/benchmarks (Set5, Set14), or skip."""
    return _shared_path("data/benchmarks")


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """../shared/reference/official-imdn (the authors' checkpoints, read in place, never copied), or skip."""
    return _shared_path("reference/official-imdn")


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """The machine is shared with training jobs: one torch thread keeps the suite polite and deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def random_models() -> dict[str, torch.nn.Module]:
    """The four networks with fixed random weights (seed 0), eval mode; tests must not modify them."""
    from model.imdn import MODEL_NAMES, build_model

    torch.manual_seed(0)
    return {name: build_model(name).eval() for name in MODEL_NAMES}


@pytest.fixture(scope="session")
def make_image() -> Callable[..., np.ndarray]:
    """smooth_image(height, width, channels=3, seed=0, noise=4.0) -> (H,W,C) uint8."""
    return smooth_image


@pytest.fixture(scope="session")
def make_benchmark_set() -> Callable[..., Path]:
    """(root, name, sizes, scales) -> a set folder in the benchmark layout (HR/, LR_bicubic/X<s>/), LR by imresize."""

    def make(root: Path, name: str = "Synth", sizes: tuple[tuple[int, int], ...] = ((48, 60), (36, 36)),
             scales: tuple[int, ...] = (2, 3, 4)) -> Path:
        from PIL import Image

        from model.resize import imresize

        set_dir = root / name
        (set_dir / "HR").mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            hr = smooth_image(h, w, seed=100 + i)
            Image.fromarray(hr).save(set_dir / "HR" / f"img_{i}.png")
            for s in scales:
                lr_dir = set_dir / "LR_bicubic" / f"X{s}"
                lr_dir.mkdir(parents=True, exist_ok=True)
                crop = torch.from_numpy(hr[: h // s * s, : w // s * s]).permute(2, 0, 1)
                lr = imresize(crop, scale=1 / s).permute(1, 2, 0).numpy()
                Image.fromarray(lr).save(lr_dir / f"img_{i}.png")
        return set_dir

    return make


@pytest.fixture(scope="session")
def runner(random_models):
    """The random networks behind PyTorch, as the engine's tests run them."""
    from model.backends import TorchRunner

    return TorchRunner(random_models)


@pytest.fixture(scope="session")
def upscaler(runner):
    """An Upscaler that runs every test image in one piece, with the paper's clean-image policy."""
    from model.engine import Upscaler
    from tests.model.engine_support import CLEAN_AS, WHOLE_BUDGET

    return Upscaler(runner, budget_bytes=WHOLE_BUDGET, **CLEAN_AS)


@pytest.fixture(scope="session")
def natural(make_image):
    """A 96x96 photo-like image: three tiles a side at a 32 px core."""
    return make_image(96, 96, seed=1)
