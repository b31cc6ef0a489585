"""Train IMDN (x2/x3/x4) or IMDN_AS on a folder of HR images.

    python -m model.train --scale 2 --data ../shared/data/train291 --out runs/x2
    python -m model.train --scale 2 --out runs/x2          # same command again resumes
    python -m model.train --model as --init runs/x2/best.safetensors --out runs/as
    python -m model.train --model as --degradation camera --val-real ../shared/data/realsr-sample --out runs/as-real
    python -m model.train --model as --pairs ../shared/data/realsr-sample --out runs/as-pairs  (real pairs)

Defaults follow the paper (Sec. 4.2): HR patch 192, batch 16, Adam (0.9, 0.999),
lr 2e-4 halved every 200K iterations, L1 loss, flips and 90-degree rotations.
``--schedule cosine`` with a larger lr and smaller patches reaches a usable model
far sooner on a CPU. A run resumes exactly from ``OUT/last.pt`` (model,
optimiser, schedule, step and RNG states); ``OUT/best.safetensors`` keeps the
best validation PSNR, ``OUT/log.csv`` and ``OUT/curve.png`` the history.

Fine-tuning IMDN_AS on real same-size pairs (``--pairs DIR``, HR/ + LR_same_size/)
starts from the bundled weights (or ``--init``), draws aligned random crops of
both images with flips and 90-degree rotations, mixes in a ``--mix`` share of
synthetic pairs (``--degradation``, on ``--data``), and keeps exponential moving
averages of the weights (``--ema``). There is no honest validation among four
pairs, so nothing is picked by a score: ``OUT/final.safetensors`` (the first EMA)
is the result, written at every checkpoint. ``--hold-out NAME`` leaves a pair out
(a leave-one-out fold, see ``bench/real_loo.py``) and logs its score as a monitor;
``--snapshot-every N`` keeps every EMA every N steps for such folds.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.curve import write_plot
from model.data import PatchSampler, list_images, load_hr, load_pairs, load_real_pairs, real_pair_names
from model.degrade import DEGRADATIONS, Degradation, DegradationConfig, degrade, load_degradation
from model.ema import EMA
from model.evaluate import REAL_PAIR_BORDER, evaluate_set, read_uint8, restore_same_size
from model.imdn import IMDN, IMDN_AS, build_model
from model.metrics import psnr
from model.resize import imresize
from model.weights import DEFAULT_WEIGHTS_DIR, file_sha256, init_from, save_weights

log = logging.getLogger("model.train")
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)
AS_VALIDATION_SCALES = (1.5, 2.5, 3.3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["x2", "x3", "x4", "as"], help="defaults to x<scale>")
    p.add_argument("--scale", type=int, default=4, choices=[2, 3, 4])
    p.add_argument("--data", type=Path, default=Path("../shared/data/train291"), help="folder of HR images")
    p.add_argument("--pairs", "--real-pairs", dest="pairs", type=Path,
                   help="IMDN_AS: fine-tune on real same-size pairs (HR/, LR_same_size/), from --init (default: the "
                        "bundled imdn_as weights); the result is OUT/final.safetensors")
    p.add_argument("--hold-out", nargs="+", default=[], metavar="NAME",
                   help="--pairs: leave these pairs (file stems) out of training, and log their RGB PSNR as a monitor")
    p.add_argument("--mix", type=float, default=0.5,
                   help="--pairs: share of each batch made from --data with --degradation (0: real pairs only)")
    p.add_argument("--ema", type=float, nargs="+", default=[], metavar="DECAY",
                   help="keep exponential moving averages of the weights with these decays; the first is the "
                        "result (final.safetensors), and what validation scores")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="save every EMA every N steps as OUT/snapshots/ema<decay>_<step>.safetensors")
    p.add_argument("--degradation", choices=DEGRADATIONS, default="bicubic",
                   help="IMDN_AS inputs: clean bicubic round trips, the synthetic camera model of model.degrade "
                        "(blur, downscaling, noise, JPEG, one or two rounds), or camera-fitted (blur kernels and "
                        "noise fitted to real pairs: --degradation-config, default the bundled fit); validation "
                        "then uses the same model on the validation set's HR images, with a fixed seed")
    p.add_argument("--degradation-config", type=Path,
                   help="camera-fitted: the fitted degradation's JSON file (python -m model.camera_fit)")
    p.add_argument("--clean-prob", type=float, default=DegradationConfig.clean_prob,
                   help="camera and camera-fitted degradations: share of plain bicubic round trips (scale 1-4)")
    p.add_argument("--val-real", type=Path,
                   help="IMDN_AS: also log RGB PSNR on real same-size pairs (HR/, LR_same_size/); a monitor only, "
                        "never used to pick weights")
    p.add_argument("--out", type=Path, required=True, help="run folder (created; resumed if it has last.pt)")
    p.add_argument("--iters", type=int, default=1_000_000)
    p.add_argument("--patch", type=int, default=192, help="HR patch side")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--schedule", choices=["step", "cosine", "constant"], default="step",
                   help="constant: the lr after the warm-up, unchanged (an EMA snapshot at step k is then exactly "
                        "what a k-step run gives)")
    p.add_argument("--lr-step", type=int, default=200_000, help="step schedule: halve lr every N iterations")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up iterations")
    p.add_argument("--min-lr-ratio", type=float, default=0.01, help="cosine schedule: final lr / lr")
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--init", type=Path, help="start from the project's own .safetensors (matching tensors only)")
    p.add_argument("--val", type=Path, default=Path("../shared/data/benchmarks/Set5"),
                   help="benchmark set folder for validation (HR/ and LR_bicubic/); 'none': no validation "
                        "(fine-tuning on pairs only)")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (TF32 convolutions on a GPU), or bf16 autocast on a GPU: faster, but its output "
                        "steps (1/256 near white) are as coarse as the errors a trained model still makes")
    p.add_argument("--time-budget", type=float,
                   help="seconds: end the run by then, fitting the schedule's length (--iters) to the measured "
                        "speed as it goes (for fixed-length leases)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.model = args.model or f"x{args.scale}"
    if args.pairs is not None and args.model != "as":
        p.error("--pairs fine-tunes IMDN_AS: add --model as")
    if args.hold_out and args.pairs is None:
        p.error("--hold-out needs --pairs")
    if not 0 <= args.mix <= 1:
        p.error("--mix is a share in [0, 1]")
    if any(not 0 < d < 1 for d in args.ema):
        p.error("--ema decays are in (0, 1)")
    if args.pairs is not None and args.init is None:
        args.init = DEFAULT_WEIGHTS_DIR / "imdn_as.safetensors"
    if str(args.val).lower() == "none":
        args.val = None
    args.max_iters = args.iters  # --time-budget may shorten args.iters, never past this
    if args.precision == "bf16" and not args.device.startswith("cuda"):
        p.error("--precision bf16 needs a CUDA device")
    return args


def lr_factor(step: int, args: argparse.Namespace) -> float:
    """Multiplier on the base lr at `step` (0-based)."""
    if args.warmup and step < args.warmup:
        return (step + 1) / args.warmup
    if args.schedule == "constant":
        return 1.0
    if args.schedule == "step":
        return 0.5 ** (step // args.lr_step)
    progress = min(1.0, (step - args.warmup) / max(1, args.iters - args.warmup))
    return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def fit_iters_to_budget(args: argparse.Namespace, step: int, steps_done: int, seconds_spent: float,
                        seconds_left: float) -> int:
    """The schedule length that ends when the time budget does, at the speed measured so far."""
    seconds_per_step = seconds_spent / max(1, steps_done)
    return max(step + 1, min(args.max_iters, step + int(seconds_left / seconds_per_step)))


def degradation_config(args: argparse.Namespace) -> Degradation | None:
    """The synthetic degradation the options ask for (None: clean bicubic round trips, or no synthetic data)."""
    if args.pairs is not None and args.mix == 0:
        return None
    if args.degradation == "camera":
        return DegradationConfig(clean_prob=args.clean_prob)
    if args.degradation == "camera-fitted":
        return dataclasses.replace(load_degradation(args.degradation_config), clean_prob=args.clean_prob)
    return None


def restore(model: IMDN_AS, image: torch.Tensor, device: str) -> torch.Tensor:
    """(3,H,W) float in [0,1] -> (3,H,W) uint8 through IMDN_AS."""
    return model(image[None].to(device))[0].clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


@torch.inference_mode()
def validate(model: IMDN | IMDN_AS, args: argparse.Namespace) -> float:
    """Mean PSNR-Y on the validation set.

    AS: the mean over shrink scales 1.5/2.5/3.3 of bicubic round trips, or with the
    camera degradation, one degraded copy of each image (seeded by its index).
    """
    if args.val is None:
        return math.nan
    model.eval()
    try:
        if isinstance(model, IMDN):
            return evaluate_set(model, args.val, model.scale).psnr
        config = degradation_config(args)
        scores = []
        for index, hr_path in enumerate(list_images(args.val / "HR")):
            hr = read_uint8(hr_path).expand(3, -1, -1)
            hr = hr[:, : hr.shape[1] // 4 * 4, : hr.shape[2] // 4 * 4]
            if config is not None:
                scores.append(psnr(restore(model, degrade(hr, config, random.Random(index)), args.device), hr,
                                   crop_border=4))
                continue
            for s in AS_VALIDATION_SCALES:
                small = imresize(hr, size=(round(hr.shape[1] / s), round(hr.shape[2] / s)))
                up = imresize(small.float() / 255, size=(hr.shape[1], hr.shape[2])).clamp(0, 1)
                scores.append(psnr(restore(model, up, args.device), hr, crop_border=4))
        return sum(scores) / len(scores)
    finally:
        model.train()


@torch.inference_mode()
def validate_real(model: IMDN_AS, folder: Path, device: str, only: list[str] | None = None) -> float:
    """Mean RGB PSNR of IMDN_AS on real same-size pairs (`only` those), as `python -m model.evaluate` scores them."""
    model.eval()
    try:
        scores = [psnr(restore_same_size(model, lr), hr, crop_border=REAL_PAIR_BORDER, y_channel=False)
                  for lr, hr in load_real_pairs(folder, only=only)]
        return sum(scores) / len(scores)
    finally:
        model.train()


def training_metadata(args: argparse.Namespace, step: int, score: float) -> dict[str, str]:
    """What a weights file records about its making: model, length, validation, degradation, the options."""
    meta = {"model": args.model, "step": str(step), "val_psnr": f"{score:.4f}",
            "train_args": json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                     sort_keys=True)}
    config = degradation_config(args)
    if args.model == "as":
        meta["degradation"] = json.dumps(config.to_dict() if config else "bicubic" if args.pairs is None else None,
                                         sort_keys=True)
    if args.pairs is not None:
        meta["recipe"] = json.dumps(recipe(args), sort_keys=True)
    return meta


def recipe(args: argparse.Namespace) -> dict[str, object]:
    """What a fine-tune on real pairs did, in a form that repeats it: recorded in its weights' metadata."""
    init = Path(args.init)
    return {"pairs": [n for n in real_pair_names(args.pairs) if n not in args.hold_out], "iters": args.iters,
            "lr": args.lr, "schedule": args.schedule, "warmup": args.warmup, "ema": args.ema[0] if args.ema else None,
            "mix": args.mix, "degradation": args.degradation if args.mix > 0 else None,
            "clean_prob": args.clean_prob if args.mix > 0 and args.degradation != "bicubic" else None,
            "patch": args.patch, "batch": args.batch, "loss": "l1", "seed": args.seed, "init": init.name,
            "init_sha256": file_sha256(init)[:16] if init.is_file() else None}


def make_sampler(args: argparse.Namespace) -> PatchSampler:
    cache = args.out / "cache"
    if args.model == "as":
        real = load_real_pairs(args.pairs, exclude=args.hold_out) if args.pairs else None
        synthetic = load_hr(args.data) if real is None or args.mix > 0 else None
        return PatchSampler(real, synthetic, scale=1, hr_patch=args.patch, seed=args.seed,
                            degradation=degradation_config(args), pair_share=1 - args.mix)
    return PatchSampler(load_pairs(args.data, args.scale, cache), None, args.scale, args.patch, args.seed)


def train(args: argparse.Namespace) -> float:
    """Run (or resume) training; returns the best validation PSNR (the last one when fine-tuning on pairs)."""
    started = time.monotonic()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    # channels_last: ~1.4x faster convolutions on CPU (measured), and the layout tensor cores want.
    model = build_model(args.model).to(args.device)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, args.beta2))
    sampler = make_sampler(args)
    step, best = 0, -math.inf
    last = args.out / "last.pt"
    ema: EMA | None = None
    if last.is_file():
        state: dict[str, Any] = torch.load(last, map_location=args.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best = state["step"], state["best"]
        sampler.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        if args.ema:
            ema = EMA(model, args.ema)
            ema.load_state_dict(state["ema"])
        log.info("resumed %s at step %d (best %.3f dB)", args.out, step, best)
    elif args.init:
        init_from(model, args.init)
    if ema is None and args.ema:
        ema = EMA(model, args.ema)  # starts at the initial weights: short fine-tunes stay near them
    fine_tune = args.pairs is not None

    def result_model() -> IMDN | IMDN_AS:
        """What validation scores and the run returns: the first EMA if there is one, else the weights."""
        return ema.model(model) if ema is not None else model

    def checkpoint() -> None:
        tmp = last.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "best": best,
                    "sampler_rng": sampler.state(), "torch_rng": torch.get_rng_state(),
                    "ema": ema.state_dict() if ema is not None else []}, tmp)
        tmp.replace(last)  # atomic: an interrupted save never corrupts the resume point
        if fine_tune or ema is not None:
            save_weights(result_model(), args.out / "final.safetensors", training_metadata(args, step, best))

    def snapshot() -> None:
        assert ema is not None
        for index, decay in enumerate(ema.decays):
            save_weights(ema.model(model, index), args.out / "snapshots" / f"ema{decay:g}_{step}.safetensors",
                         training_metadata(args, step, best))

    stop = False

    def validate_and_keep_best() -> tuple[str, str]:
        nonlocal best
        scored = result_model()
        score = validate(scored, args)
        real_dir = args.val_real or (args.pairs if args.hold_out else None)
        only = (args.hold_out or None) if real_dir == args.pairs else None
        real = validate_real(scored, real_dir, args.device, only) if real_dir and isinstance(scored, IMDN_AS) else None
        if fine_tune:
            best = score  # nothing is picked by a score: the run's result is its last weights
        elif score > best:
            best = score
            save_weights(scored, args.out / "best.safetensors", training_metadata(args, step, score))
        log.info("step %d: val PSNR %.3f dB (best %.3f)%s", step, score, best,
                 "" if real is None else f", real pairs RGB PSNR {real:.3f} dB")
        return "" if math.isnan(score) else f"{score:.4f}", "" if real is None else f"{real:.4f}"

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    csv_path = args.out / "log.csv"
    new_log = not csv_path.is_file()
    log_file = csv_path.open("a", newline="")
    writer = csv.writer(log_file)
    if new_log:
        writer.writerow(["step", "loss", "lr", "seconds_per_iter", "val_psnr", "val_real_psnr"])
    use_amp = args.precision == "bf16"
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: pick the fastest kernels once
        torch.backends.cudnn.allow_tf32 = True
    loop_start, loop_first_step = time.monotonic(), step
    model.train()
    running: torch.Tensor | None = None  # EMA of the loss, kept on the device: no sync per step
    since = time.perf_counter()
    bar = tqdm(total=args.iters, initial=step, desc=f"train {args.model}", mininterval=5 if sys.stderr.isatty() else 60)
    try:
        while step < args.iters and not stop:
            if args.time_budget and step - loop_first_step >= 10:
                now = time.monotonic()  # fitted before a step, so the run's last step still validates
                args.iters = fit_iters_to_budget(args, step, step - loop_first_step, now - loop_start,
                                                 args.time_budget - (now - started))
                bar.total = args.iters
            for group in optimizer.param_groups:
                group["lr"] = args.lr * lr_factor(step, args)
            lr, hr = sampler.sample(args.batch)
            lr = lr.to(args.device, memory_format=torch.channels_last, non_blocking=True)
            hr = hr.to(args.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = F.l1_loss(model(lr).float(), hr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if ema is not None:
                ema.update(model)
            running = loss.detach() if running is None else 0.98 * running + 0.02 * loss.detach()
            bar.update(1)
            if args.snapshot_every and ema is not None and step % args.snapshot_every == 0:
                snapshot()
            val_psnr = val_real = ""
            if step % args.val_every == 0 or step == args.iters or stop:
                val_psnr, val_real = validate_and_keep_best()
            if step % args.save_every == 0 or val_psnr or val_real:
                elapsed = (time.perf_counter() - since) / max(1, args.save_every)
                loss_now = running.item() if running is not None else math.nan
                bar.set_postfix(loss=f"{loss_now:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
                writer.writerow([step, f"{loss_now:.5f}", f"{optimizer.param_groups[0]['lr']:.3e}", f"{elapsed:.3f}",
                                 val_psnr, val_real])
                log_file.flush()
                since = time.perf_counter()
                checkpoint()
                speed = (time.monotonic() - loop_start) / max(1, step - loop_first_step)
                log.info("progress %s: step %d/%d, loss %.4f, lr %.2e, %.2f s/it, about %.0f s left", args.out.name,
                         step, args.iters, loss_now, optimizer.param_groups[0]["lr"], speed,
                         speed * (args.iters - step))
                if val_psnr or val_real:
                    write_plot(csv_path, args.out / "curve.png")
    finally:
        bar.close()
        checkpoint()
        log_file.close()
    return best


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    best = train(args)
    result = "final.safetensors" if args.pairs is not None or args.ema else "best.safetensors"
    log.info("done: %s validation PSNR %.3f dB, weights in %s", "last" if args.pairs else "best", best,
             args.out / result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
