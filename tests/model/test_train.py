"""Training CLI: a smoke run on tiny synthetic data, exact resume, IMDN_AS, and the schedule helpers."""

from __future__ import annotations

import argparse
import csv
import math
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from model.degrade import DegradationConfig
from model.imdn import build_model
from model.train import fit_iters_to_budget, init_from, lr_factor, main, parse_args
from model.weights import load_model, save_weights


@pytest.fixture(autouse=True)
def _restore_sigterm():
    """train() installs a SIGTERM handler for graceful stops; give pytest its own back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_image, make_benchmark_set):
    """4 training images (64x64 smooth gradients + noise) and a 2-image validation set (X2, X3, X4)."""
    root = tmp_path_factory.mktemp("train-data")
    train = root / "train"
    train.mkdir()
    for i in range(4):
        Image.fromarray(make_image(64, 64, seed=i, noise=8.0)).save(train / f"img_{i}.png")
    val = make_benchmark_set(root, "Val", sizes=((48, 48), (40, 44)), scales=(2, 3, 4))
    return train, val


def _argv(data, out: Path, iters: int, *extra: str) -> list[str]:
    train, val = data
    return ["--data", str(train), "--out", str(out), "--iters", str(iters), "--patch", "32", "--batch", "4",
            "--val", str(val), "--val-every", "6", "--save-every", "3", "--threads", "1", "--device", "cpu",
            *extra]


def _log(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


def test_train_smoke_x2_loss_falls_and_outputs_exist(data, tmp_path):
    out = tmp_path / "run"
    assert main(_argv(data, out, 12, "--scale", "2", "--lr", "1e-3")) == 0
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], f"loss did not fall: {losses}"
    assert [bool(r["val_psnr"]) for r in rows] == [False, True, False, True]
    for name in ("best.safetensors", "curve.png", "last.pt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    with Image.open(out / "curve.png") as curve:
        assert curve.format == "PNG"
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == "x2"
    assert float(meta["val_psnr"]) == max(float(r["val_psnr"]) for r in rows if r["val_psnr"])
    load_model("x2", out / "best.safetensors")  # strict load: a complete x2 network
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 12


def test_train_resume_is_exact(data, tmp_path):
    """12 iterations in one go == 6 iterations, then the same command resumed to 12."""
    one_go, resumed = tmp_path / "a", tmp_path / "b"
    assert main(_argv(data, one_go, 12, "--scale", "2")) == 0
    assert main(_argv(data, resumed, 6, "--scale", "2")) == 0
    assert torch.load(resumed / "last.pt", weights_only=True)["step"] == 6
    assert main(_argv(data, resumed, 12, "--scale", "2")) == 0
    a = torch.load(one_go / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert a["best"] == b["best"]
    assert [r["step"] for r in _log(resumed)] == ["3", "6", "9", "12"]  # one header, appended on resume


def test_train_any_scale_model_two_iterations(data, tmp_path):
    out = tmp_path / "as"
    train, val = data
    argv = ["--model", "as", "--data", str(train), "--out", str(out), "--iters", "2", "--patch", "32",
            "--batch", "2", "--val", str(val), "--val-every", "6", "--save-every", "3", "--threads", "1",
            "--device", "cpu"]
    assert main(argv) == 0
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == [2] and rows[0]["val_psnr"]
    load_model("as", out / "best.safetensors")
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2


def test_train_patch_too_large_for_every_image(data, tmp_path):
    with pytest.raises(ValueError, match="use a smaller --patch"):
        main(_argv(data, tmp_path / "big", 1, "--scale", "2", "--patch", "128"))


def test_parse_args_defaults_follow_paper():
    args = parse_args(["--out", "x"])
    assert (args.model, args.scale, args.patch, args.batch, args.lr) == ("x4", 4, 192, 16, 2e-4)
    assert (args.schedule, args.lr_step, args.beta2) == ("step", 200_000, 0.999)
    assert parse_args(["--out", "x", "--scale", "3"]).model == "x3"
    assert parse_args(["--out", "x", "--model", "as"]).model == "as"


def _schedule(**kwargs) -> argparse.Namespace:
    defaults = {"warmup": 0, "schedule": "step", "lr_step": 200_000, "iters": 1000, "min_lr_ratio": 0.01}
    return argparse.Namespace(**(defaults | kwargs))


def test_lr_factor_step_schedule_halves():
    args = _schedule(lr_step=100)
    assert [lr_factor(s, args) for s in (0, 99, 100, 199, 200, 450)] == [1, 1, 0.5, 0.5, 0.25, 0.0625]


def test_lr_factor_warmup_then_cosine():
    args = _schedule(schedule="cosine", warmup=10, iters=110, min_lr_ratio=0.1)
    assert lr_factor(0, args) == pytest.approx(0.1)
    assert lr_factor(9, args) == pytest.approx(1.0)
    assert lr_factor(10, args) == pytest.approx(1.0)
    assert lr_factor(60, args) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, args) == pytest.approx(0.1)
    assert lr_factor(500, args) == pytest.approx(0.1)


def test_fit_iters_to_budget_follows_measured_speed():
    args = argparse.Namespace(max_iters=10_000)
    # 100 steps in 10 s, 50 s left: 500 more steps at that speed.
    assert fit_iters_to_budget(args, step=100, steps_done=100, seconds_spent=10, seconds_left=50) == 600
    # A resumed run measures only its own steps.
    assert fit_iters_to_budget(args, step=5_000, steps_done=100, seconds_spent=20, seconds_left=20) == 5_100
    # Never past --iters, never before the next step (budget already spent).
    assert fit_iters_to_budget(args, step=100, steps_done=100, seconds_spent=1, seconds_left=1e6) == 10_000
    assert fit_iters_to_budget(args, step=100, steps_done=100, seconds_spent=10, seconds_left=-5) == 101


def test_train_time_budget_ends_the_run_early(data, tmp_path):
    """A budget far shorter than --iters ends the run with its schedule fitted to it, weights saved."""
    out = tmp_path / "run"
    assert main(_argv(data, out, 100_000, "--scale", "2", "--schedule", "cosine", "--time-budget", "3")) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert 3 <= state["step"] < 100_000
    rows = _log(out)
    assert rows[-1]["val_psnr"], "the last step of a fitted schedule validates"
    assert float(rows[-1]["lr"]) < 2e-4 * 0.05, "the cosine schedule ran to its end"
    assert (out / "best.safetensors").is_file()


def test_parse_args_bf16_needs_cuda():
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--device", "cpu", "--precision", "bf16"])


def test_init_from_copies_matching_tensors(tmp_path):
    torch.manual_seed(20)
    source = build_model("x2")
    path = tmp_path / "x2.safetensors"
    save_weights(source, path)
    target = build_model("x4")
    before = target.upsampler[0].weight.clone()
    init_from(target, path)
    assert torch.equal(target.IMDB3.c1.weight, source.IMDB3.c1.weight)
    assert torch.equal(target.fea_conv.weight, source.fea_conv.weight)
    assert torch.equal(target.upsampler[0].weight, before)  # different scale: left alone


def test_init_from_rejects_pth(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        init_from(build_model("x2"), tmp_path / "weights.pth")


def test_train_any_scale_camera_degradation_records_its_making(data, tmp_path, make_image):
    """--degradation camera trains IMDN_AS on synthetic camera pairs, logs the real-pair monitor, and the
    weights file records the degradation settings and the training length."""
    import json

    out = tmp_path / "as-camera"
    train, val = data
    real = tmp_path / "real"
    for folder in ("HR", "LR_same_size"):
        (real / folder).mkdir(parents=True)
    hr = make_image(36, 40, seed=9)
    Image.fromarray(hr).save(real / "HR" / "p.png")
    Image.fromarray(make_image(36, 40, seed=9, noise=12.0)).save(real / "LR_same_size" / "p.png")
    argv = ["--model", "as", "--degradation", "camera", "--val-real", str(real), "--data", str(train),
            "--out", str(out), "--iters", "3", "--patch", "32", "--batch", "2", "--val", str(val),
            "--val-every", "3", "--save-every", "3", "--threads", "1", "--device", "cpu"]
    assert main(argv) == 0
    (row,) = _log(out)
    assert row["step"] == "3" and float(row["val_psnr"]) > 0 and float(row["val_real_psnr"]) > 0
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        meta = f.metadata()
    degradation = json.loads(meta["degradation"])
    assert degradation["clean_prob"] == pytest.approx(DegradationConfig.clean_prob)
    assert degradation["first"]["jpeg_quality"] == [30, 95]
    assert meta["step"] == "3" and json.loads(meta["train_args"])["degradation"] == "camera"
    assert load_model("as", out / "best.safetensors").input_skip
