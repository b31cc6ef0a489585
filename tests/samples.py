"""Test inputs shared by every test folder: photo-like images and randomly initialised weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth_image(height: int, width: int, channels: int = 3, seed: int = 0, noise: float = 4.0) -> np.ndarray:
    """A natural-ish (H,W,C) uint8 image: low-frequency waves and gradients plus a little noise
    (it compresses like a photo and gives the networks something to do)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for _ in range(channels):
        fy, fx, phase = rng.uniform(0.02, 0.12), rng.uniform(0.02, 0.12), rng.uniform(0, 2 * np.pi)
        plane = 128 + 60 * np.sin(fy * y + fx * x + phase) + 40 * (x / max(1, width) - y / max(1, height))
        planes.append(plane + rng.normal(0, noise, (height, width)))
    return np.clip(np.stack(planes, axis=-1), 0, 255).round().astype(np.uint8)


def random_weights(folder: Path, names: tuple[str, ...] | None = None, seed: int = 0) -> Path:
    """Randomly initialised safetensors in the layout IMDN_WEIGHTS expects (default: every model).

    Tests check plumbing, not image quality, so they need not wait for the trained weights.
    """
    import torch

    from model.imdn import MODEL_NAMES, build_model
    from model.weights import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    for name in names or MODEL_NAMES:
        torch.manual_seed(seed)
        save_weights(build_model(name), folder / f"imdn_{name}.safetensors")
    return folder
