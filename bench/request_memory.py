"""Peak memory of one request against the admission's estimate (model/memory.py: request_bytes).

    python bench/request_memory.py                       # the grid below, ONNX Runtime as served
    python bench/request_memory.py --sides 1024 --scales 1.01 2 --backend torch

Each case decodes an upload, upscales it and encodes the response as the service does (service/processing.py:
encoded_chunks, the chunks dropped as a socket would take them), in this process, with the service's memory
budget and glibc settings. Before each case the process hands its free memory back (gc, malloc_trim, the
runner's arena) and resets its peak (/proc/self/clear_refs); the peak is VmHWM after it, less VmRSS before.
The network's activations are not part of the estimate (the service reserves them per replica: arena cap,
'act' below), so a case is within its admission when peak <= estimate + act.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.tuning import tune_malloc  # noqa: E402

tune_malloc()  # the service's glibc settings (service/tuning.py), as it sets them at start-up

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from model.backends import OnnxRunner, TorchRunner, load_models  # noqa: E402
from model.engine import Upscaler  # noqa: E402
from model.imageio import decode, header_layout  # noqa: E402
from model.memory import request_bytes  # noqa: E402
from service.processing import Timings, encoded_chunks  # noqa: E402
from service.state import CPU_BUDGET_MB, arena_limit  # noqa: E402

MB = 2**20
# (name, channels, bits, format): the layouts that decode differently.
KINDS = [("png-rgb8", 3, 8, "PNG"), ("png-rgba8", 4, 8, "PNG"), ("png-gray16", 1, 16, "PNG"),
         ("png-rgb16", 3, 16, "PNG"), ("png-rgba16", 4, 16, "PNG"), ("jpeg-rgb8", 3, 8, "JPEG"),
         ("webp-rgba8", 4, 8, "WEBP")]


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def release(runner: object) -> None:
    gc.collect()
    getattr(runner, "release_memory", lambda: None)()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def upload(side: int, channels: int, bits: int, fmt: str) -> bytes:
    """A noise image (incompressible, so the upload is as large as such an image gets)."""
    rng = np.random.default_rng(side + channels + bits)
    if bits == 16:  # Pillow writes no 16-bit colour PNGs: by hand, rows unfiltered
        samples = rng.integers(0, 65536, (side, side, channels), dtype=np.uint16).astype(">u2")
        raw = b"".join(b"\x00" + row.tobytes() for row in samples)
        color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

        def chunk(kind: bytes, payload: bytes) -> bytes:
            return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

        header = struct.pack(">IIBBBBB", side, side, 16, color_type, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + \
            chunk(b"IEND", b"")
    shape = (side, side) if channels == 1 else (side, side, channels)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, fmt, quality=90)
    return buffer.getvalue()


def measure(upscaler: Upscaler, runner: object, data: bytes, scale: float, fmt: str) -> tuple[int, int, float]:
    """-> (estimate, peak bytes over the resting RSS, seconds) for one request."""
    layout = header_layout(data)
    plan = upscaler.plan((layout.height, layout.width), scale)
    estimate = request_bytes(plan, layout, len(data), fmt, upscaler.budget_bytes, upscaler.parts_budget_bytes)
    release(runner)
    rest = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    started = time.perf_counter()
    picture = decode(data)
    chunks = encoded_chunks(upscaler, picture, plan, fmt, 90, 1, Timings(), threading.Event(), 5.0)
    del picture
    for _chunk in chunks:
        pass
    seconds = time.perf_counter() - started
    peak = (status_kb("VmHWM") - rest) * 1024
    return estimate, peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.01, 2.0])
    parser.add_argument("--kinds", nargs="+", default=[k[0] for k in KINDS])
    parser.add_argument("--formats", nargs="+", default=["png", "webp"], help="output formats")
    parser.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    parser.add_argument("--budget-mb", type=int, default=CPU_BUDGET_MB)
    args = parser.parse_args()
    budget = args.budget_mb * MB
    models = load_models(["x2", "x3", "x4", "as"], "default")
    act = arena_limit(budget)
    runner = (OnnxRunner(models, threads=torch.get_num_threads(), arena_limit_bytes=act) if args.backend == "onnx"
              else TorchRunner(models))
    parts_budget = act if args.backend == "onnx" else budget  # service/state.py: parts_budget
    upscaler = Upscaler(runner, budget_bytes=budget, parts_budget_bytes=parts_budget)
    print(f"backend {args.backend}, budget {args.budget_mb} MB, activations reserved per replica (act) "
          f"{act / MB:.0f} MB, {torch.get_num_threads()} threads")
    print(f"{'case':<34} {'upload':>8} {'peak MB':>8} {'est MB':>8} {'peak/est':>8} {'peak/(est+act)':>14} {'s':>6}")
    worst = 0.0
    for side in args.sides:
        for name, channels, bits, in_fmt in (k for k in KINDS if k[0] in args.kinds):
            data = upload(side, channels, bits, in_fmt)
            for scale in args.scales:
                for fmt in args.formats:
                    estimate, peak, seconds = measure(upscaler, runner, data, scale, fmt)
                    within = peak / (estimate + act)
                    worst = max(worst, within)
                    case = f"{name} {side}x{side} x{scale:g} -> {fmt}"
                    print(f"{case:<34} {len(data) / MB:>7.1f}M {peak / MB:>8.0f} {estimate / MB:>8.0f} "
                          f"{peak / estimate:>8.2f} {within:>14.2f} {seconds:>6.1f}", flush=True)
    print(f"worst peak/(estimate+act): {worst:.2f}")


if __name__ == "__main__":
    main()
