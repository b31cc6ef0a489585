"""Cost per output pixel against image size, for every path, on the engine as the service builds it.

    python bench/scaling.py --quick          # sanity: outputs of 0.09 to 3 MP
    python bench/scaling.py                  # the docs figure: 0.09 to 16 MP
    python bench/scaling.py --paths x2 as --repeats 3
    python bench/scaling.py --naive          # x2 against one plain eager pass over the whole image

For each path (x2, x3, x4; IMDN_AS at x2.5; the service's any-scale policy at x2.5,
which is x3 then bicubic down; x6, which is x4 then IMDN_AS) and each output size, the
engine upscales a photo-like 3:4 picture to the end (all bands, as uint8) and the
minimum time of the repeats (default 2: the first run of a new shape also pays one-time
set-up in ONNX Runtime) is divided by the output pixels. Prints the curve and each
path's worst/best ratio, and writes a plot (default docs/performance/scaling.png).

With --naive, x2 on square inputs of 256 to 1024 px is also timed as the paper authors'
code runs it: one eager fp32 PyTorch pass over the whole image (model.backends.EagerRunner),
interleaved with the engine, and the ratio naive/engine is printed (> 1: the engine is faster).

The engine is ``bench/service.py engine()``: the service's device, backend, memory budget,
allocator settings and warm-up (IMDN_AS's part graphs made before timing). Timings come
from one run on a possibly shared CPU: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.tuning import set_openmp_wait_policy  # noqa: E402

set_openmp_wait_policy()  # as the service sets it, before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.service import engine  # noqa: E402
from model.backends import EagerRunner, load_models  # noqa: E402
from model.engine import Upscaler  # noqa: E402
from model.picture import picture_from_array  # noqa: E402

# name -> (model choice, scale)
PATHS = {"x2": ("auto", 2.0), "x3": ("auto", 3.0), "x4": ("auto", 4.0), "as": ("as", 2.5),
         "downscale": ("auto", 2.5), "x4+as": ("auto", 6.0)}
# Output heights; widths are 4/3 of them (256x341 up to 3456x4608 = 15.9 MP).
QUICK_HEIGHTS = (256, 384, 768, 960, 1536)
FULL_HEIGHTS = (256, 320, 384, 480, 576, 640, 768, 960, 1152, 1344, 1536, 1920, 2304, 2880, 3456)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus texture: statistics like a photo's, nothing flat."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(4 * (x + y))], axis=2) * 0.35 + 0.5
    return np.clip((base + rng.normal(0, 0.06, (height, width, 3))) * 255, 0, 255).astype(np.uint8)


def seconds(upscaler: Upscaler, pixels: np.ndarray, model: str, scale: float,
            repeats: int) -> tuple[float, float, str]:
    """Minimum over repeats of the wall and the CPU time (all threads) to produce every band; the plan."""
    picture = picture_from_array(pixels)
    plan = upscaler.plan(picture.size, scale, model=model)
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _band in upscaler.picture_bands(picture, plan):
            pass
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu, plan.label


def naive_comparison(upscaler: Upscaler, weights: str, repeats: int) -> None:
    """x2 on square inputs: one eager pass over the whole image (naive) vs the engine, interleaved."""
    eager = EagerRunner(load_models(["x2"], weights))
    print(f"\nx2, naive one-pass eager PyTorch vs the engine (min of {repeats}, interleaved)")
    print(f"{'input':>9} {'naive s':>8} {'engine s':>9} {'naive/engine':>12} {'cpu naive/engine':>16}")
    for side in (256, 384, 512, 768, 1024):
        pixels = photo(side, side)
        batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255)
        naive_wall = naive_cpu = engine_wall = engine_cpu = float("inf")
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            eager("x2", batch).clamp(0, 1).mul(255).round().byte()
            naive_wall = min(naive_wall, time.perf_counter() - start)
            naive_cpu = min(naive_cpu, time.process_time() - start_cpu)
            wall, cpu, _ = seconds(upscaler, pixels, "auto", 2.0, 1)
            engine_wall, engine_cpu = min(engine_wall, wall), min(engine_cpu, cpu)
        print(f"{f'{side}x{side}':>9} {naive_wall:8.2f} {engine_wall:9.2f} {naive_wall / engine_wall:12.2f} "
              f"{naive_cpu / engine_cpu:16.2f}", flush=True)


def plot(curves: dict[str, list[tuple[float, float]]], path: Path, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output megapixels")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller sizes (a sanity check)")
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--heights", type=int, nargs="+", help="output heights (default: by mode)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per size; the minimum counts")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="what the ratios and the plot use: wall time, or CPU time of all threads "
                             "(steadier when other processes share the cores)")
    parser.add_argument("--naive", action="store_true", help="only the x2 comparison with a naive one-pass peer")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/performance/scaling.png",
                        help="where the PNG goes ('-' for none)")
    args = parser.parse_args()
    heights = args.heights or (QUICK_HEIGHTS if args.quick else FULL_HEIGHTS)
    repeats = args.repeats
    upscaler = engine(args.weights)
    upscaler.content = "clean"  # the paths name the integer networks; "as" is the path photos take
    if args.naive:
        naive_comparison(upscaler, args.weights, repeats)
        return
    runner = type(upscaler.runner).__name__
    print(f"cost per output pixel: {runner}, budget {upscaler.budget_bytes / 2**20:.0f} MB, "
          f"{torch.get_num_threads()} threads, minimum of {repeats} run(s) per size")
    print(f"{'path':<10} {'input':>10} {'output':>11} {'MP':>6} {'plan':<10} {'wall s':>7} {'us/px':>6} "
          f"{'cpu s':>7} {'us/px':>6}")
    curves: dict[str, list[tuple[float, float]]] = {}
    for name in args.paths:
        model, scale = PATHS[name]
        for out_h in heights:
            in_h, in_w = max(8, round(out_h / scale)), max(8, round(out_h * 4 / 3 / scale))
            wall, cpu, label = seconds(upscaler, photo(in_h, in_w), model, scale, repeats)
            out_h, out_w = upscaler.plan((in_h, in_w), scale, model=model).out_size
            per_pixel = 1e6 / (out_h * out_w)
            curves.setdefault(name, []).append((out_h * out_w / 1e6, (wall if args.clock == "wall" else cpu) *
                                                per_pixel))
            print(f"{name:<10} {f'{in_w}x{in_h}':>10} {f'{out_w}x{out_h}':>11} {out_h * out_w / 1e6:6.2f} "
                  f"{label:<10} {wall:7.3f} {wall * per_pixel:6.2f} {cpu:7.3f} {cpu * per_pixel:6.2f}", flush=True)
    print(f"\n{args.clock} time per output pixel")
    print(f"{'path':<10} {'best us':>8} {'worst us':>9} {'worst/best':>10}")
    for name, points in curves.items():
        costs = [c for _, c in points]
        print(f"{name:<10} {min(costs):8.2f} {max(costs):9.2f} {max(costs) / min(costs):10.2f}")
    if str(args.plot) != "-":
        mode = "quick" if args.quick else "full"
        plot(curves, args.plot, f"engine as the service builds it: {runner}, {torch.get_num_threads()} threads, "
             f"{mode} run, min of {repeats}", f"µs per output pixel ({args.clock} time)")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
