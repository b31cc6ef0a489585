"""A real `python -m service` process on a free loopback port, for end-to-end tests.

The weights are random (the tests check plumbing, not image quality), so the
tests do not wait for training. Shared by tests/client and tests/web.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120  # model load + warm-up on a busy 2-core machine


def random_weights(folder: Path) -> Path:
    """Randomly initialised safetensors for every model, in the layout IMDN_WEIGHTS expects."""
    import torch

    from model.imdn import MODEL_NAMES, build_model
    from model.weights import save_weights

    torch.manual_seed(0)
    for name in MODEL_NAMES:
        save_weights(build_model(name), folder / f"imdn_{name}.safetensors")
    return folder


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    port: int
    log: Path
    process: subprocess.Popen

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@contextmanager
def live_server(weights: Path, workdir: Path, **settings: str) -> Iterator[LiveServer]:
    """Start the service with IMDN_* `settings` (keys without the prefix), wait for /readyz, stop it after."""
    port = free_port()
    log = workdir / f"service-{port}.log"
    # The caller's IMDN_* (API keys, devices...) must not leak in: each test states what it needs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMDN_")}
    env |= {
        "IMDN_WEIGHTS": str(weights),
        "IMDN_DEVICE": "cpu",
        "IMDN_THREADS": "1",  # the machine is shared with training jobs
        "IMDN_DRAIN_TIMEOUT_S": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env |= {f"IMDN_{key.upper()}": value for key, value in settings.items()}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    server = LiveServer(f"http://127.0.0.1:{port}", port, log, process)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while _status(f"{server.url}/readyz") != 200:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited with {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service was not ready within {READY_TIMEOUT_S} s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
