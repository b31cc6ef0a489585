"""Leave-one-out over real camera pairs: fine-tune IMDN_AS on all pairs but one, score the one, rotate.

    python bench/real_loo.py --runs /work/runs/loo-a --iters 600 --lr 1e-4 --ema 0.99 0.995 0.998 --mix 0
    python bench/real_loo.py --runs /work/runs/loo-b --mix 0.5 --degradation camera-fitted ...
    python bench/real_loo.py --runs /work/runs/loo-a --score-only          (the table again, no training)

Each fold is ``python -m model.train --model as --pairs DATA --hold-out NAME`` in its
own run folder under RUNS (resumable: the same command continues where it stopped),
with a constant learning rate after the warm-up and EMAs of the weights snapshotted
every ``--snapshot-every`` steps. A constant lr makes the EMA snapshot at step k
exactly what a k-step run gives, so one run per fold scores every (iterations, EMA
decay) recipe on its held-out pair. With ``--degradation camera-fitted`` each fold's
synthetic share uses a degradation fitted to its training pairs only
(``model.camera_fit.fit_degradation``), never to the held-out one.

The table gives, per held-out pair, the RGB PSNR gain (border 4, as
``python -m model.evaluate`` scores real pairs) over the camera's input, for the
initial weights and every snapshot, and the mean over the pairs: that mean is
what picks a recipe. No number here comes from a pair the scored weights saw.
Scores are cached in RUNS/scores.json.

``--gallery ROW`` (a row of the table, e.g. "ema 0.995 @   800") writes, per pair,
docs/gallery/real_loo_<pair>.png: crops of the camera's input, the initial
weights, the ROW weights of the fold that held that pair out, and the camera's
HR shot, and prints their Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED  # noqa: E402
from model.camera_fit import fit_degradation  # noqa: E402
from model.data import load_real_pairs, real_pair_names  # noqa: E402
from model.evaluate import REAL_PAIR_BORDER, restore_same_size  # noqa: E402
from model.imdn import IMDN_AS  # noqa: E402
from model.metrics import psnr  # noqa: E402
from model.weights import DEFAULT_WEIGHTS_DIR, load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def fold_command(args: argparse.Namespace, name: str, extra: list[str]) -> list[str]:
    out = args.runs / name
    command = [sys.executable, "-m", "model.train", "--model", "as", "--pairs", str(args.pairs), "--hold-out", name,
               "--out", str(out), "--init", str(args.init), "--data", str(args.data), "--val", "none",
               "--iters", str(args.iters), "--lr", str(args.lr), "--schedule", "constant", "--warmup",
               str(args.warmup), "--ema", *map(str, args.ema), "--snapshot-every", str(args.snapshot_every),
               "--save-every", str(args.snapshot_every), "--val-every", str(args.iters), "--mix", str(args.mix),
               "--degradation", args.degradation, "--patch", str(args.patch), "--batch", str(args.batch),
               "--threads", str(args.threads), "--seed", str(args.seed), "--device", "cpu"]
    if args.degradation == "camera-fitted" and args.mix > 0:
        config = out / "camera_fitted.json"
        if not config.is_file():
            training = [n for n in real_pair_names(args.pairs) if n != name]
            pairs = load_real_pairs(args.pairs, exclude=[name])
            fitted = fit_degradation({n: (lr.float() / 255, hr.float() / 255)
                                      for n, (lr, hr) in zip(training, pairs, strict=True)})
            out.mkdir(parents=True, exist_ok=True)
            config.write_text(json.dumps(fitted.to_dict(), indent=1) + "\n")
        command += ["--degradation-config", str(config)]
    return [*(["nice", "-n", str(args.nice)] if args.nice else []), *command, *extra]


def run_folds(args: argparse.Namespace, names: list[str], extra: list[str]) -> None:
    """Every fold's training, at most --jobs at a time; a fold already at --iters returns at once."""
    pending = list(names)
    running: dict[str, subprocess.Popen[bytes]] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            (args.runs / name).mkdir(parents=True, exist_ok=True)
            log = (args.runs / name / "train.log").open("ab")
            running[name] = subprocess.Popen(fold_command(args, name, extra), cwd=REPO, stdout=log,
                                             stderr=subprocess.STDOUT)
            print(f"fold {name}: training (log {args.runs / name / 'train.log'})", flush=True)
        time.sleep(2)
        for name, process in list(running.items()):
            if process.poll() is not None:
                del running[name]
                if process.returncode:
                    for other in running.values():
                        other.terminate()  # the trainer checkpoints on SIGTERM: a rerun resumes it
                        other.wait()
                    sys.exit(f"fold {name}: training failed (exit {process.returncode}); see its train.log")
                print(f"fold {name}: done", flush=True)


def score(weights: Path, pair: tuple[torch.Tensor, torch.Tensor]) -> float:
    model = load_model("as", weights)
    assert isinstance(model, IMDN_AS)
    lr, hr = pair
    return psnr(restore_same_size(model, lr), hr, crop_border=REAL_PAIR_BORDER, y_channel=False)


def score_folds(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, float]]:
    """{row: {pair: RGB PSNR}}: the input, the initial weights, and every snapshot, each on its fold's held-out pair."""
    cache_path = args.runs / "scores.json"
    cache: dict[str, float] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    table: dict[str, dict[str, float]] = {}
    for name in names:
        (lr, hr), = load_real_pairs(args.pairs, only=[name])
        candidates = {"init": args.init}
        for path in sorted((args.runs / name / "snapshots").glob("ema*_*.safetensors")):
            decay, step = path.stem.removeprefix("ema").split("_")
            candidates[f"ema {decay} @ {int(step):>5}"] = path
        table.setdefault("input", {})[name] = psnr(lr, hr, crop_border=REAL_PAIR_BORDER, y_channel=False)
        for row, path in candidates.items():
            key = f"{name}:{path.resolve()}:{path.stat().st_mtime_ns}"
            if key not in cache:
                cache[key] = score(path, (lr, hr))
                cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            table.setdefault(row, {})[name] = cache[key]
    return table


def format_table(table: dict[str, dict[str, float]], names: list[str]) -> str:
    """Gain over the input per pair, and the mean gain: rows scored on every pair only."""
    base = table["input"]
    lines = [f"{'weights (each pair scored by a model that never saw it)':<40} "
             + " ".join(f"{n:>9}" for n in names) + f" {'mean gain':>10}",
             f"{'input, RGB PSNR (dB)':<40} " + " ".join(f"{base[n]:9.2f}" for n in names) + f" {'':>10}"]
    complete = {row: scores for row, scores in table.items() if row != "input" and set(scores) >= set(names)}
    best = max(complete, key=lambda r: statistics.mean(complete[r][n] - base[n] for n in names), default=None)
    for row, scores in complete.items():
        gains = [scores[n] - base[n] for n in names]
        mark = "  <- best mean" if row == best else ""
        lines.append(f"{row:<40} " + " ".join(f"{g:+9.2f}" for g in gains) + f" {statistics.mean(gains):+10.3f}{mark}")
    return "\n".join(lines)


def detail_window(hr: torch.Tensor, side: int) -> tuple[int, int]:
    """(y, x) of the side x side window of `hr` with the most gradient energy (where restoration shows)."""
    gray = hr.float().mean(0)
    energy = (gray[1:, :-1] - gray[:-1, :-1]).abs() + (gray[:-1, 1:] - gray[:-1, :-1]).abs()
    pooled = torch.nn.functional.avg_pool2d(energy[None, None], side, stride=side // 4)[0, 0]
    index = int(pooled.argmax())
    return index // pooled.shape[1] * (side // 4), index % pooled.shape[1] * (side // 4)


def gallery(args: argparse.Namespace, names: list[str], table: dict[str, dict[str, float]]) -> str:
    """Per pair: camera input | initial weights | the fold's ROW weights | camera HR, crops at 2x; Markdown back."""
    font = ImageFont.load_default(size=15)
    lines = [f"| Pair | Input | Initial weights | {args.gallery.strip()} (fold without the pair) | Gain |",
             "| --- | ---: | ---: | ---: | ---: |"]
    images = []
    decay, step = (part.strip() for part in args.gallery.removeprefix("ema").split("@"))
    for name in names:
        (lr, hr), = load_real_pairs(args.pairs, only=[name])
        outputs = [restore_same_size(load_model("as", path), lr) for path in  # type: ignore[arg-type]
                   (args.init, args.runs / name / "snapshots" / f"ema{decay}_{int(step)}.safetensors")]
        scores = [table["input"][name], table["init"][name], table[args.gallery][name]]
        side = min(args.crop, *hr.shape[-2:])
        y, x = detail_window(hr, side)
        tiles = [(img[:, y : y + side, x : x + side], label) for img, label in
                 zip((lr, *outputs, hr), (f"camera input {scores[0]:.2f} dB", f"initial {scores[1]:.2f} dB",
                                          f"fine-tuned {scores[2]:.2f} dB", "camera HR"), strict=True)]
        zoom, gap, label_h = 2, 6, 24
        width, height = side * zoom, side * zoom
        sheet = Image.new("RGB", (4 * width + 5 * gap, label_h + height + gap), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for i, (tile, label) in enumerate(tiles):
            left = gap + i * (width + gap)
            draw.text((left + 2, 4), label, fill=(20, 24, 30), font=font)
            picture = Image.fromarray(tile.permute(1, 2, 0).contiguous().numpy())
            sheet.paste(picture.resize((width, height), Image.Resampling.NEAREST), (left, label_h))
        out = args.gallery_out / f"real_loo_{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out, optimize=True)
        lines.append(f"| {name} | {scores[0]:.2f} dB | {scores[1]:.2f} dB | {scores[2]:.2f} dB | "
                     f"{scores[2] - scores[0]:+.2f} dB |")
        images.append(f"![{name}: camera input | initial IMDN_AS | fine-tuned without {name} | camera HR]"
                      f"(gallery/{out.name})")
    return "\n".join([*lines, "", *images])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=SHARED / "data/realsr-sample", help="HR/ + LR_same_size/")
    parser.add_argument("--data", type=Path, default=SHARED / "data/train291", help="HR images for --mix")
    parser.add_argument("--runs", type=Path, required=True, help="one run folder per fold, and scores.json")
    parser.add_argument("--init", type=Path, default=DEFAULT_WEIGHTS_DIR / "imdn_as.safetensors")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ema", type=float, nargs="+", default=[0.99, 0.995, 0.998])
    parser.add_argument("--snapshot-every", type=int, default=100)
    parser.add_argument("--mix", type=float, default=0.0)
    parser.add_argument("--degradation", default="camera-fitted", choices=["bicubic", "camera", "camera-fitted"])
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per fold")
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the training processes (0: as is)")
    parser.add_argument("--folds", nargs="+", metavar="NAME", help="only these held-out pairs (default: all)")
    parser.add_argument("--score-only", action="store_true", help="no training: score what the runs hold")
    parser.add_argument("--gallery", metavar="ROW", help="write crops of this row's weights (see above)")
    parser.add_argument("--gallery-out", type=Path, default=REPO / "docs/gallery")
    parser.add_argument("--crop", type=int, default=128, help="gallery crop side in HR pixels")
    args, extra = parser.parse_known_args(argv)
    names = args.folds or real_pair_names(args.pairs)
    if len(real_pair_names(args.pairs)) < 2:
        sys.exit(f"{args.pairs}: leave-one-out needs at least two pairs")
    args.runs.mkdir(parents=True, exist_ok=True)
    if not args.score_only:
        run_folds(args, names, extra)
    torch.set_num_threads(args.threads * args.jobs)
    table = score_folds(args, names)
    text = format_table(table, names)
    (args.runs / "loo.txt").write_text(text + "\n")
    print(text)
    if args.gallery:
        print(gallery(args, names, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
