"""Backend speed: the same weights on the same input, plain eager fp32 (the authors' way) vs each backend.

    python bench/backends.py                      # 256x256 -> x4 on the CPU, 15 interleaved rounds
    python bench/backends.py --size 512 --model x2 --device cuda

Prints per-backend median time, the median of per-round speed ratios against eager
fp32, effective GFLOP/s, and the largest output difference from eager (in 1/255).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import conv_flops, interleaved, median_ratio, models_for  # noqa: E402
from model.backends import EagerRunner, OnnxRunner, TorchRunner, onnx_available  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="x4", choices=["x2", "x3", "x4", "as"])
    parser.add_argument("--size", type=int, default=256, help="input side")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")
    parser.add_argument("--weights", default="random", help="'random', 'default' or 'official:DIR'")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow to build on a CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.model
    x = torch.rand(1, 3, args.size, args.size)
    flops = conv_flops(models_for(args.weights, [name])[name], x)

    eager = EagerRunner(models_for(args.weights, [name]))
    candidates: dict[str, Callable[[], torch.Tensor]] = {"eager fp32 (NCHW)": lambda: eager(name, x)}
    outputs = {}
    device = torch.device(args.device)
    if device.type == "cpu":
        torch_cl = TorchRunner(models_for(args.weights, [name]), "cpu")
        candidates["torch channels_last"] = lambda: torch_cl(name, x)
        if onnx_available():
            ort = OnnxRunner(models_for(args.weights, [name]), threads=torch.get_num_threads())
            candidates["onnxruntime"] = lambda: ort(name, x)
        if args.compile:
            compiled = TorchRunner(models_for(args.weights, [name]), "cpu")
            compiled.models[name] = torch.compile(compiled.models[name])  # type: ignore[assignment]
            candidates["torch.compile channels_last"] = lambda: compiled(name, x)
    else:
        eager_gpu = EagerRunner({n: m.to(device) for n, m in models_for(args.weights, [name]).items()})
        xg = x.to(device)

        def run_eager_gpu() -> torch.Tensor:
            out = eager_gpu(name, xg)
            torch.cuda.synchronize()
            return out.cpu()

        candidates = {"eager fp32 (NCHW)": run_eager_gpu}
        for dtype in (torch.float16, torch.bfloat16):
            runner = TorchRunner(models_for(args.weights, [name]), device, dtype)
            candidates[f"torch {str(dtype).removeprefix('torch.')} channels_last"] = partial(runner, name, x)
    for label, fn in candidates.items():
        outputs[label] = fn()
    times = interleaved(candidates, args.rounds)
    base = times["eager fp32 (NCHW)"]
    print(f"IMDN {name}, input {args.size}x{args.size}, {flops / 1e9:.1f} GFLOP per image, device {args.device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    print(f"{'backend':<30} {'median ms':>10} {'speed-up':>9} {'GFLOP/s':>8} {'max diff':>9}")
    reference = outputs["eager fp32 (NCHW)"]
    for label, samples in times.items():
        med = statistics.median(samples)
        diff = (outputs[label].float().cpu() - reference.float().cpu()).abs().max().item() * 255
        print(f"{label:<30} {med * 1000:10.1f} {median_ratio(base, samples):8.2f}x {flops / med / 1e9:8.1f} "
              f"{diff:8.3f}/255")


if __name__ == "__main__":
    main()
