"""A training run's learning curve (OUT/curve.png): loss, and the validation scores where they were taken."""

from __future__ import annotations

import csv
from pathlib import Path


def write_plot(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(steps, [float(r["loss"]) for r in rows], color="tab:blue", label="L1 loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("L1 loss (running mean)")
    val = [(int(r["step"]), float(r["val_psnr"])) for r in rows if r["val_psnr"]]
    real = [(int(r["step"]), float(r["val_real_psnr"])) for r in rows if r.get("val_real_psnr")]
    if val or real:
        ax2 = ax.twinx()
        if val:
            ax2.plot(*zip(*val, strict=True), "o-", color="tab:red", label="val PSNR-Y")
        if real:
            ax2.plot(*zip(*real, strict=True), "s-", color="tab:green", label="real pairs, RGB PSNR")
            ax2.legend(loc="lower right")
        ax2.set_ylabel("validation PSNR (dB)")
    ax.set_title(csv_path.parent.name)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
