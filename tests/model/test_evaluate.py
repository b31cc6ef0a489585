"""Evaluation on benchmark folders: the paper's Set5 x4 numbers, the CLI, and any folder in the layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from model.evaluate import evaluate, evaluate_set, find_sets, format_table, main, read_uint8, super_resolve
from model.imdn import build_model
from model.weights import save_weights


@pytest.fixture(scope="module")
def set5_x4_official(benchmarks, official_dir):
    return evaluate(f"official:{official_dir}", benchmarks / "Set5", [4])


@pytest.mark.shared
def test_evaluate_official_x4_set5_matches_reference_table(set5_x4_official):
    (result,) = set5_x4_official
    assert (result.set, result.scale, result.images) == ("Set5", 4, 5)
    assert result.psnr == pytest.approx(32.19, abs=0.02)
    assert result.ssim == pytest.approx(0.8936, abs=0.001)


@pytest.mark.shared
def test_evaluate_cli_official_x4_set5_json(benchmarks, official_dir, tmp_path, set5_x4_official):
    out = tmp_path / "set5.json"
    argv = ["--weights", f"official:{official_dir}", "--data", str(benchmarks / "Set5"), "--scale", "4",
            "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["set"], r["scale"], r["images"]) for r in rows] == [("Set5", 4, 5)]
    assert rows[0]["psnr"] == pytest.approx(set5_x4_official[0].psnr, abs=1e-9)
    assert rows[0]["ssim"] == pytest.approx(set5_x4_official[0].ssim, abs=1e-9)


@pytest.mark.shared
def test_find_sets_on_benchmark_root(benchmarks):
    names = [p.name for p in find_sets(benchmarks)]
    assert names == sorted(names)
    assert {"Set5", "Set14"} <= set(names)
    assert find_sets(benchmarks / "Set5") == [benchmarks / "Set5"]


@pytest.fixture()
def synthetic(tmp_path, make_benchmark_set):
    """A two-image set in the benchmark layout and a folder of freshly initialised weights."""
    data = tmp_path / "bench"
    set_dir = make_benchmark_set(data, "Synth", sizes=((48, 60), (36, 37)), scales=(2, 3))
    weights = tmp_path / "weights"
    torch.manual_seed(15)
    for name in ("x2", "x3"):
        save_weights(build_model(name), weights / f"imdn_{name}.safetensors")
    return data, set_dir, weights


def test_evaluate_synthetic_set_end_to_end(synthetic, tmp_path):
    data, set_dir, weights = synthetic
    saved = tmp_path / "sr"
    results = evaluate(str(weights), data, [2, 3], save_dir=saved)
    assert [(r.set, r.scale, r.images) for r in results] == [("Synth", 2, 2), ("Synth", 3, 2)]
    for r in results:
        assert 0 < r.psnr < 60 and -1 <= r.ssim <= 1
    # the SR images are written, at LR size x scale (HR modcropped)
    with Image.open(saved / "Synth" / "X3" / "img_1.png") as img:
        assert img.size == (36, 36)  # 37 // 3 * 3 = 36 wide, 36 high
    # the same answer when the root is the set folder itself
    again = evaluate(str(weights), set_dir, [2])
    assert again[0].psnr == pytest.approx(results[0].psnr)


def test_evaluate_cli_writes_json(synthetic, tmp_path, capsys):
    data, _, weights = synthetic
    out = tmp_path / "results.json"
    assert main(["--weights", str(weights), "--data", str(data), "--scale", "2", "3", "--json", str(out),
                 "--threads", "1"]) == 0
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and len(rows) == 2
    for row, scale in zip(rows, (2, 3), strict=True):
        assert {"set", "scale", "psnr", "ssim"} <= row.keys()
        assert row["set"] == "Synth" and row["scale"] == scale
        assert isinstance(row["psnr"], float) and isinstance(row["ssim"], float)
    table = capsys.readouterr().out
    assert "Synth" in table and "x3" in table


def test_evaluate_cli_missing_weights_exits_2(synthetic, tmp_path, capsys):
    data, _, _ = synthetic
    assert main(["--weights", str(tmp_path / "none"), "--data", str(data), "--scale", "2"]) == 2
    assert "weights file not found" in capsys.readouterr().err


def test_evaluate_cli_bad_data_folder_exits_2(tmp_path, capsys):
    assert main(["--weights", str(tmp_path), "--data", str(tmp_path / "nothing"), "--scale", "2"]) == 2
    assert "no benchmark set found" in capsys.readouterr().err


def test_evaluate_set_missing_lr_scale_raises(synthetic):
    _, set_dir, weights = synthetic
    model = build_model("x4").eval()
    with pytest.raises(FileNotFoundError, match="X4"):
        evaluate_set(model, set_dir, 4)


def test_evaluate_set_missing_lr_image_raises(synthetic):
    _, set_dir, _ = synthetic
    (set_dir / "LR_bicubic" / "X2" / "img_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="no LR image for img_1.png"):
        evaluate_set(build_model("x2").eval(), set_dir, 2)


def test_evaluate_set_grayscale_image(tmp_path, random_models):
    """A one-channel HR/LR pair (like Set14's img_003) goes through as three equal channels."""
    set_dir = tmp_path / "Gray"
    (set_dir / "HR").mkdir(parents=True)
    (set_dir / "LR_bicubic" / "X2").mkdir(parents=True)
    torch.manual_seed(16)
    hr = torch.randint(0, 256, (1, 32, 30), dtype=torch.uint8)
    from model.resize import imresize

    Image.fromarray(hr[0].numpy()).save(set_dir / "HR" / "g.png")
    Image.fromarray(imresize(hr, scale=0.5)[0].numpy()).save(set_dir / "LR_bicubic" / "X2" / "g.png")
    assert read_uint8(set_dir / "HR" / "g.png").shape == (1, 32, 30)
    result = evaluate_set(random_models["x2"], set_dir, 2)
    assert result.images == 1 and result.psnr > 0


def test_super_resolve_gray_and_rgb(random_models):
    torch.manual_seed(17)
    lr = torch.randint(0, 256, (1, 5, 6), dtype=torch.uint8)
    sr = super_resolve(random_models["x3"], lr)
    assert sr.shape == (3, 15, 18) and sr.dtype == torch.uint8
    assert torch.equal(sr, super_resolve(random_models["x3"], lr.expand(3, -1, -1)))


def test_format_table_lists_every_result(synthetic):
    _, set_dir, weights = synthetic
    results = evaluate(str(weights), set_dir, [2])
    lines = format_table(results).splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == ["Synth", "x2"]


@pytest.fixture()
def real_pairs(tmp_path, make_image):
    """A set in the RealSR layout (HR/, LR_same_size/): the LR is a blurred, noisier copy; one odd size."""
    set_dir = tmp_path / "real" / "Cams"
    for folder in ("HR", "LR_same_size"):
        (set_dir / folder).mkdir(parents=True)
    for i, (h, w) in enumerate(((40, 48), (34, 37))):
        hr = make_image(h, w, seed=200 + i, noise=6.0)
        lr = np.asarray(Image.fromarray(hr).resize((w // 2, h // 2), Image.BICUBIC).resize((w, h), Image.BICUBIC))
        Image.fromarray(hr).save(set_dir / "HR" / f"cam_{i}.png")
        Image.fromarray(lr).save(set_dir / "LR_same_size" / f"cam_{i}.png")
    weights = tmp_path / "weights"
    torch.manual_seed(18)
    save_weights(build_model("as"), weights / "imdn_as.safetensors")
    return set_dir, weights


def test_evaluate_real_pairs_scores_model_beside_input(real_pairs, tmp_path):
    from model.evaluate import RealSetResult
    from model.metrics import psnr as psnr_of

    set_dir, weights = real_pairs
    (result,) = evaluate(str(weights), set_dir.parent, [2, 3, 4], save_dir=tmp_path / "sr")
    assert isinstance(result, RealSetResult)
    assert (result.set, result.scale, result.model, result.images) == ("Cams", 1, "as", 2)
    # the input row is exactly the metric of the LR as it is: RGB PSNR, border 4
    pairs = [(read_uint8(set_dir / "LR_same_size" / n), read_uint8(set_dir / "HR" / n)) for n in ("cam_0.png",
                                                                                             "cam_1.png")]
    expected = np.mean([psnr_of(lr, hr, 4, y_channel=False) for lr, hr in pairs])
    assert result.input_psnr == pytest.approx(expected)
    assert result.psnr_y != result.psnr and 0 < result.ssim <= 1 and 0 < result.input_ssim <= 1
    with Image.open(tmp_path / "sr" / "Cams" / "AS" / "cam_1.png") as img:
        assert img.size == (37, 34)  # same size, even when not a multiple of 4


def test_evaluate_cli_real_pairs_json(real_pairs, tmp_path, capsys):
    set_dir, weights = real_pairs
    out = tmp_path / "real.json"
    assert main(["--weights", str(weights), "--data", str(set_dir), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert {"set", "scale", "psnr", "ssim", "psnr_y", "input_psnr", "input_psnr_y", "input_ssim"} <= row.keys()
    assert row["set"] == "Cams" and row["scale"] == 1
    table = capsys.readouterr().out
    assert "RGB PSNR" in table and "input" in table and "IMDN_AS" in table


def test_evaluate_mixed_root_benchmark_and_real_sets(real_pairs, tmp_path, make_benchmark_set):
    set_dir, weights = real_pairs
    make_benchmark_set(set_dir.parent, "Synth", sizes=((24, 24),), scales=(2,))
    torch.manual_seed(19)
    save_weights(build_model("x2"), weights / "imdn_x2.safetensors")
    results = evaluate(str(weights), set_dir.parent, [2])
    assert [(r.set, r.scale) for r in results] == [("Synth", 2), ("Cams", 1)]


def test_evaluate_real_pairs_size_mismatch_raises(real_pairs):
    set_dir, weights = real_pairs
    Image.new("RGB", (10, 10)).save(set_dir / "LR_same_size" / "cam_0.png")
    with pytest.raises(ValueError, match="differ in size"):
        evaluate(str(weights), set_dir, [2])
