"""For the client and web tests: `live_server` (the shared harness, tests/live_service.py, with their
settings) and `png_bytes`. They run on random weights: they check plumbing, not image quality."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.live_service import ServiceProcess, run_service


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A small RGB PNG with some structure (gradients and a checker)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                    ((x // 4 + y // 4 + seed) % 2) * 200], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def live_server(weights: Path, workdir: Path, **settings: str) -> Iterator[ServiceProcess]:
    """Start the service with IMDN_* `settings` (keys without the prefix), wait for /readyz, stop it after."""
    env = {"IMDN_DRAIN_TIMEOUT_S": "2"} | {f"IMDN_{key.upper()}": value for key, value in settings.items()}
    with run_service(workdir, env, weights=weights) as server:
        yield server
