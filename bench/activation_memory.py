"""Peak memory per input pixel of one network call, per backend: the constants behind tile sizing.

    python bench/activation_memory.py

Each measurement runs in a fresh process (peak RSS cannot be reset) on a large
input after a small warm-up call, and prints (peak - warm) / input pixels.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import resource, sys, torch
from model.imdn import build_model
from model.backends import OnnxRunner, TorchRunner
backend, name, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
models = {name: build_model(name).eval()}
run = TorchRunner(models) if backend == "torch" else OnnxRunner(models, threads=1)
run(name, torch.rand(1, 3, 64, 64))
warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
run(name, torch.rand(1, 3, side, side))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print((peak - warm) / side**2)
"""


def main() -> None:
    print(f"{'backend':<8} {'model':<5} {'input':>9} {'bytes / input pixel':>20}")
    for backend in ("torch", "onnx"):
        for name in ("x2", "x3", "x4", "as"):
            side = 1024 if name == "as" else 512
            out = subprocess.run([sys.executable, "-c", PROBE, backend, name, str(side)], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split()[-1]
            print(f"{backend:<8} {name:<5} {f'{side}x{side}':>9} {float(out):20.0f}")


if __name__ == "__main__":
    main()
