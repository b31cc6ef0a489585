"""Peak RSS of the engine alone (no HTTP) upscaling one large image, per backend.

    python bench/engine_memory.py --side 4096 --scale 2          # torch and onnx, each in a fresh process
    python bench/engine_memory.py --side 4000 --model as --backends onnx --arena-mb 512   # IMDN_AS, as served

The output bands are produced and dropped (as when streaming to a file or a socket),
so what remains is the engine's own footprint: the decoded input, one tile batch
within the memory budget, and a band or two. Each probe runs with the service's glibc
settings (service/tuning.py: MALLOC_SETTINGS) unless the environment sets its own.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.tuning import MALLOC_SETTINGS  # noqa: E402

PROBE = """
import resource, sys, time, numpy as np, torch
from model.backends import OnnxRunner, TorchRunner, load_models
from model.engine import Upscaler
from model.picture import picture_from_array
backend, side, scale, budget_mb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
model, arena_mb = sys.argv[5], int(sys.argv[6])
models = load_models(["x2", "x3", "x4", "as"], "default")
runner = (TorchRunner(models) if backend == "torch" else
          OnnxRunner(models, threads=torch.get_num_threads(), arena_limit_bytes=arena_mb * 2**20))
upscaler = Upscaler(runner, budget_bytes=budget_mb * 2**20, content="clean")
rng = np.random.default_rng(0)
picture = picture_from_array(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
start = time.perf_counter()
for _band in upscaler.picture_bands(picture, upscaler.plan(picture.size, scale, model=model)):
    pass
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{peak:.0f} {time.perf_counter() - start:.1f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--scale", type=float, default=2)
    parser.add_argument("--budget-mb", type=int, default=512)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--model", choices=["auto", "as"], default="auto", help="auto: the x2 network; as: IMDN_AS")
    parser.add_argument("--arena-mb", type=int, default=0, help="onnx: cap on ONNX Runtime's arena (0: none)")
    args = parser.parse_args()
    print(f"{args.side}x{args.side} x{args.scale:g}, model {args.model}, memory budget {args.budget_mb} MB, "
          f"arena cap {args.arena_mb or 'none'}")
    print(f"{'backend':<8} {'peak RSS MB':>12} {'seconds':>8}")
    for backend in args.backends:
        probe_args = [str(args.side), str(args.scale), str(args.budget_mb), args.model, str(args.arena_mb)]
        env = {variable: str(value) for variable, (_, value) in MALLOC_SETTINGS.items()} | dict(os.environ)
        out = subprocess.run([sys.executable, "-c", PROBE, backend, *probe_args], cwd=ROOT, capture_output=True,
                             text=True, check=True, env=env)
        peak, seconds = out.stdout.split()[-2:]
        print(f"{backend:<8} {peak:>12} {seconds:>8}")


if __name__ == "__main__":
    main()
