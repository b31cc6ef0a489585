"""`imdn-sr calibrate`: fine-tune IMDN_AS on a camera's own same-size pairs with the recipe chosen by
leave-one-out over the four RealSR pairs (docs/model-card.md), the same recipe the bundled weights came from."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from model.camera_fit import fit_degradation
from model.data import load_real_pairs, real_pair_names
from model.train import parse_args, train

# The fine-tuning recipe chosen by leave-one-out over the four RealSR pairs (bench/real_loo.py; the model
# card's table): `imdn-sr calibrate` runs it on a user's pairs, and the bundled imdn_as weights are it on all four.
CALIBRATION_RECIPE: dict[str, Any] = {
    "iters": 800, "lr": 1e-4, "schedule": "constant", "warmup": 20, "ema": 0.995, "mix": 0.5,
    "degradation": "camera-fitted", "clean_prob": 0.5, "patch": 96, "batch": 16,
}


def calibrate_main(argv: list[str] | None = None) -> int:
    """`imdn-sr calibrate PAIRS -o FILE`: fine-tune IMDN_AS on a camera's own pairs with the chosen recipe."""
    p = argparse.ArgumentParser(prog="imdn-sr calibrate", description=(
        "Fine-tune IMDN_AS on your own camera's same-size pairs (PAIRS/HR/ and PAIRS/LR_same_size/, the same file "
        "names in both) with the recipe chosen by leave-one-out on real camera pairs; serve the result with "
        "IMDN_CAMERAS as model=as:NAME, or as imdn_as.safetensors under IMDN_WEIGHTS (docs/training/README.md)."))
    p.add_argument("pairs", type=Path, help="folder with HR/ and LR_same_size/")
    p.add_argument("-o", "--out", type=Path, required=True, help="the weights file to write (.safetensors)")
    p.add_argument("--init", type=Path, help="weights to start from (default: the bundled imdn_as)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/train291"),
                   help="HR images for the recipe's synthetic share, degraded as fitted to your pairs (skipped, "
                        "with a note, if the folder is not there)")
    p.add_argument("--run-dir", type=Path, help="where the run is kept (default: OUT's name + .run/); the same "
                                                "command again resumes it")
    p.add_argument("--time-budget", type=float, help="seconds: fit the run into them")
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for key in ("iters", "patch", "batch"):
        p.add_argument(f"--{key}", type=int, default=CALIBRATION_RECIPE[key], help=f"recipe: {CALIBRATION_RECIPE[key]}")
    p.add_argument("--mix", type=float, default=CALIBRATION_RECIPE["mix"],
                   help=f"recipe: {CALIBRATION_RECIPE['mix']} (share of synthetic patches)")
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if opts.out.suffix != ".safetensors":
        p.error("-o names a .safetensors file")
    run = opts.run_dir or opts.out.with_name(opts.out.stem + ".run")
    mix = opts.mix
    if mix > 0 and not opts.data.is_dir():
        print(f"note: {opts.data} is not there: training on your pairs only (--mix 0)", file=sys.stderr)
        mix = 0.0
    r = CALIBRATION_RECIPE
    argv_train = ["--model", "as", "--pairs", str(opts.pairs), "--out", str(run), "--val", "none",
                  "--iters", str(opts.iters), "--lr", str(r["lr"]), "--schedule", r["schedule"],
                  "--warmup", str(min(r["warmup"], max(0, opts.iters // 2))), "--ema", str(r["ema"]),
                  "--mix", str(mix), "--patch", str(opts.patch), "--batch", str(opts.batch), "--data", str(opts.data),
                  "--val-every", str(opts.iters), "--save-every", str(max(1, min(100, opts.iters))),
                  "--seed", str(opts.seed), "--device", opts.device]
    if opts.init:
        argv_train += ["--init", str(opts.init)]
    if opts.threads:
        argv_train += ["--threads", str(opts.threads)]
    if opts.time_budget:
        argv_train += ["--time-budget", str(opts.time_budget)]
    if mix > 0:
        names = real_pair_names(opts.pairs)
        fitted = fit_degradation({n: (lr.float() / 255, hr.float() / 255)
                                  for n, (lr, hr) in zip(names, load_real_pairs(opts.pairs), strict=True)})
        run.mkdir(parents=True, exist_ok=True)
        (run / "camera_fitted.json").write_text(json.dumps(fitted.to_dict(), indent=1) + "\n")
        argv_train += ["--degradation", "camera-fitted", "--degradation-config", str(run / "camera_fitted.json"),
                       "--clean-prob", str(r["clean_prob"])]
    args = parse_args(argv_train)
    if min(min(lr.shape[-2:]) for lr, _ in load_real_pairs(args.pairs)) < args.patch:
        p.error(f"every pair must be at least {args.patch} px on a side (or pass a smaller --patch)")
    train(args)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "final.safetensors", opts.out)
    print(f"wrote {opts.out}: serve it with IMDN_CAMERAS={opts.out} as model=as:{opts.out.stem}, or as "
          "imdn_as.safetensors in a folder named by IMDN_WEIGHTS")
    return 0
