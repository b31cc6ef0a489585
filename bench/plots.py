"""Plots for docs/performance.md, drawn from the tables the benchmark commands printed.

    python bench/service.py throughput > docs/performance/throughput-cpu.txt
    python bench/service.py memory > docs/performance/memory-onnx.txt
    python bench/plots.py          # -> docs/performance/throughput.png, memory.png

Each input file is a command's output as printed, optionally with '#' lines saying which command
and machine; the plot measures nothing itself, so a figure is exactly as good as its table. Lines
that are not table rows (headers, GPU memory notes) are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "performance"


def rows(path: Path) -> tuple[str, list[list[str]]]:
    """(the first '#' line without its '#', table rows whose first cell is a number or '(idle)')."""
    label, table = "", []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            label = label or line.lstrip("# ").strip()
            continue
        cells = line.split()
        if cells and (cells[0] == "(idle)" or cells[0].replace(".", "", 1).isdigit()):
            table.append(cells)
    if not table:
        raise SystemExit(f"{path}: no table rows found")
    return label, table


def throughput_plot(path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, table = rows(path)
    clients = [int(r[0]) for r in table]
    rate, ratio, p50, p95 = ([float(r[i]) for r in table] for i in (1, 2, 3, 4))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(clients, rate, "o-")
    for x, y, k in zip(clients, rate, ratio, strict=True):
        left.annotate(f"{k:.2f}x engine", (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                      fontsize=8)
    left.margins(x=0.15)
    left.set(xscale="log", xlabel="concurrent clients", ylabel="images / s", title="Throughput",
             ylim=(0, max(rate) * 1.3))
    right.plot(clients, p50, "o-", label="p50")
    right.plot(clients, p95, "s--", label="p95")
    right.set(xscale="log", xlabel="concurrent clients", ylabel="seconds", title="Latency")
    right.legend()
    for axis in (left, right):
        axis.set_xticks(clients, [str(c) for c in clients])
        axis.grid(alpha=0.3)
    fig.suptitle(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def memory_plot(paths: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 3.8))
    for path in paths:
        label, table = rows(path)
        idle = next((float(r[1]) for r in table if r[0] == "(idle)"), None)
        points = [(float(r[0]), float(r[2])) for r in table if r[0] != "(idle)"]
        backend = path.stem.removeprefix("memory-")  # memory-onnx.txt -> onnx
        (line,) = axis.plot([p[0] for p in points], [p[1] for p in points], "o-",
                            label=f"{backend}: {label.split('   (')[0]}")
        if idle is not None:
            axis.axhline(idle, color=line.get_color(), linestyle=":", linewidth=1)
    axis.set(xlabel="output megapixels (x2)", ylabel="server peak RSS, MB", ylim=(0, None),
             title="Peak memory vs output size (dotted: the idle server)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--throughput", type=Path, default=DOCS / "throughput-cpu.txt")
    parser.add_argument("--memory", type=Path, nargs="+",
                        default=[DOCS / "memory-onnx.txt", DOCS / "memory-torch.txt"])
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    throughput_plot(args.throughput, args.out / "throughput.png")
    memory_plot(args.memory, args.out / "memory.png")
    print(f"wrote {args.out / 'throughput.png'} and {args.out / 'memory.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
