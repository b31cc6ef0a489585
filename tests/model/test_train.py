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
from model.train import fit_iters_to_budget, lr_factor, main, parse_args
from model.weights import init_from, load_model, read_state_dict, save_weights


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


@pytest.fixture(scope="module")
def camera_pairs(tmp_path_factory, make_image):
    """Three same-size pairs (HR/ + LR_same_size/): the LR is the HR blurred, as a camera's softer shot."""
    from model.degrade import Kernel, blur, blur_kernel, to_uint8

    root = tmp_path_factory.mktemp("camera-pairs")
    for sub in ("HR", "LR_same_size"):
        (root / sub).mkdir()
    kernel = blur_kernel(Kernel("iso", 7, 1.2, 1.2, 0.0))
    for i, name in enumerate(("p1", "p2", "p3")):
        hr = make_image(48, 52, seed=30 + i, noise=10.0)
        Image.fromarray(hr).save(root / "HR" / f"{name}.png")
        lr = to_uint8(blur(torch.from_numpy(hr).permute(2, 0, 1).float() / 255, kernel))
        Image.fromarray(lr.permute(1, 2, 0).numpy()).save(root / "LR_same_size" / f"{name}.png")
    return root


def _pairs_argv(data, pairs: Path, out: Path, iters: int, *extra: str) -> list[str]:
    train, _ = data
    return ["--model", "as", "--pairs", str(pairs), "--data", str(train), "--out", str(out), "--iters", str(iters),
            "--patch", "32", "--batch", "2", "--val", "none", "--val-every", str(iters), "--save-every", "2",
            "--schedule", "constant", "--warmup", "2", "--threads", "1", "--device", "cpu", *extra]


def test_fine_tune_on_pairs_holds_out_keeps_emas_and_records_the_recipe(data, camera_pairs, tmp_path):
    """--pairs with --hold-out: trains on the other pairs (with a synthetic share fitted to them), logs the
    held-out pair as a monitor, snapshots every EMA, and final.safetensors (the first EMA) records the recipe."""
    import json

    from model.camera_fit import fit_degradation
    from model.data import load_real_pairs

    config = tmp_path / "fitted.json"
    fitted = fit_degradation({n: (lr.float() / 255, hr.float() / 255) for n, (lr, hr)
                              in zip(("p2", "p3"), load_real_pairs(camera_pairs, exclude=["p1"]), strict=True)}, 7)
    config.write_text(json.dumps(fitted.to_dict()))
    out = tmp_path / "fold"
    init = tmp_path / "init.safetensors"
    torch.manual_seed(3)
    save_weights(build_model("as"), init)
    assert main(_pairs_argv(data, camera_pairs, out, 4, "--hold-out", "p1", "--ema", "0.9", "0.5",
                            "--snapshot-every", "2", "--mix", "0.5", "--degradation", "camera-fitted",
                            "--degradation-config", str(config), "--init", str(init))) == 0
    rows = _log(out)
    assert [r["step"] for r in rows] == ["2", "4"] and not rows[-1]["val_psnr"] and float(rows[-1]["val_real_psnr"]) > 0
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [
        "ema0.5_2.safetensors", "ema0.5_4.safetensors", "ema0.9_2.safetensors", "ema0.9_4.safetensors"]
    assert not (out / "best.safetensors").exists()  # nothing is picked by a score
    with safe_open(str(out / "final.safetensors"), "pt") as f:
        meta = f.metadata()
    recipe = json.loads(meta["recipe"])
    assert recipe["pairs"] == ["p2", "p3"] and recipe["ema"] == 0.9 and recipe["mix"] == 0.5
    assert recipe["iters"] == 4 and recipe["lr"] == 2e-4 and recipe["degradation"] == "camera-fitted"
    assert recipe["init"] == "init.safetensors" and len(recipe["init_sha256"]) == 16
    assert json.loads(meta["degradation"])["sources"] == ["p2", "p3"]
    final = read_state_dict(out / "final.safetensors")
    snapshot = read_state_dict(out / "snapshots" / "ema0.9_4.safetensors")
    assert all(torch.equal(final[k], snapshot[k]) for k in final)
    # The EMA lags the weights: it sits between the initial weights and the trained ones.
    start, trained = read_state_dict(init), torch.load(out / "last.pt", weights_only=True)["model"]
    key = "fea_conv.0.weight"
    assert 0 < (final[key] - start[key]).norm() < (trained[key] - start[key]).norm()


def test_fine_tune_on_pairs_resumes_exactly_with_its_emas(data, camera_pairs, tmp_path):
    one_go, resumed = tmp_path / "a", tmp_path / "b"
    extra = ("--ema", "0.8", "--mix", "0")
    assert main(_pairs_argv(data, camera_pairs, one_go, 4, *extra)) == 0
    assert main(_pairs_argv(data, camera_pairs, resumed, 2, *extra)) == 0
    assert main(_pairs_argv(data, camera_pairs, resumed, 4, *extra)) == 0
    a, b = read_state_dict(one_go / "final.safetensors"), read_state_dict(resumed / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_update_is_the_moving_average():
    from model.ema import EMA

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, [0.9, 0.5])
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert float(ema.model(model, 0).weight[0, 0].detach()) == pytest.approx(1 - 0.9**2)
    assert float(ema.model(model, 1).weight[0, 0].detach()) == pytest.approx(1 - 0.5**2)
    assert float(model.weight[0, 0].detach()) == 1.0  # the model itself is left alone


def test_parse_args_pairs_options():
    from model.weights import DEFAULT_WEIGHTS_DIR

    args = parse_args(["--out", "x", "--model", "as", "--real-pairs", "p", "--val", "none"])
    assert args.pairs == Path("p") and args.val is None  # --real-pairs: the older spelling
    assert args.init == DEFAULT_WEIGHTS_DIR / "imdn_as.safetensors"  # fine-tunes the bundled weights
    for bad in (["--pairs", "p"], ["--model", "as", "--hold-out", "a"], ["--model", "as", "--ema", "1.5"],
                ["--model", "as", "--mix", "2"]):
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", *bad])
    assert lr_factor(500, _schedule(schedule="constant", warmup=10)) == 1.0


def test_calibrate_end_to_end_on_tiny_pairs(data, camera_pairs, tmp_path):
    """`imdn-sr calibrate PAIRS -o FILE`: the recipe's fine-tune (with its synthetic share fitted to the pairs)
    writes weights that load as IMDN_AS and record the recipe; the same command again resumes."""
    import json

    from model.calibrate import CALIBRATION_RECIPE
    from model.cli import main as cli_main

    train, _ = data
    out = tmp_path / "my_camera.safetensors"
    argv = ["calibrate", str(camera_pairs), "-o", str(out), "--iters", "3", "--patch", "32", "--batch", "2",
            "--threads", "1", "--device", "cpu", "--data", str(train), "--mix", "0.5"]
    assert cli_main(argv) == 0
    model = load_model("as", out)
    assert model.input_skip
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    recipe = json.loads(meta["recipe"])
    assert recipe["pairs"] == ["p1", "p2", "p3"] and recipe["iters"] == 3 and recipe["mix"] == 0.5
    assert (recipe["lr"], recipe["ema"], recipe["schedule"]) == (
        CALIBRATION_RECIPE["lr"], CALIBRATION_RECIPE["ema"], CALIBRATION_RECIPE["schedule"])
    assert json.loads(meta["degradation"])["sources"] == ["p1", "p2", "p3"]  # fitted to these pairs
    run = tmp_path / "my_camera.run"
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3
    assert cli_main(argv) == 0  # already done: resumes at step 3 and writes the same weights
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3


def test_calibrate_without_training_images_uses_the_pairs_alone(camera_pairs, tmp_path, capsys):
    from model.cli import main as cli_main

    out = tmp_path / "cam.safetensors"
    assert cli_main(["calibrate", str(camera_pairs), "-o", str(out), "--iters", "2", "--patch", "32", "--batch", "2",
                     "--threads", "1", "--device", "cpu", "--data", str(tmp_path / "absent"), "--mix", "0.5"]) == 0
    assert "--mix 0" in capsys.readouterr().err
    load_model("as", out)
    with pytest.raises(SystemExit):
        cli_main(["calibrate", str(camera_pairs), "-o", str(tmp_path / "cam.pth")])
