"""Backends: TorchRunner, EagerRunner and OnnxRunner compute the same network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.backends import EagerRunner, TorchRunner, export_onnx, load_models, onnx_available, pick_device
from model.engine import Upscaler
from model.imdn import contrast_from_moments
from model.weights import save_weights
from tests.model.engine_support import CLEAN_AS

# The legacy (TorchScript) ONNX exporter is chosen on purpose; its deprecation notes are not test failures.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def x2_model(random_models):
    return {"x2": random_models["x2"]}


@pytest.fixture(scope="module")
def torch_runner(x2_model):
    return TorchRunner(x2_model)


@pytest.fixture(scope="module")
def onnx_runner(x2_model):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install .[onnx])")
    from model.backends import OnnxRunner

    return OnnxRunner(x2_model, threads=1)


def _batch(seed: int, shape=(2, 3, 17, 23)) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.rand(*shape)


def test_torch_runner_output_contract(torch_runner):
    out = torch_runner("x2", _batch(0))
    assert out.shape == (2, 3, 34, 46)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.is_contiguous()


def test_eager_runner_equals_torch_runner(random_models, torch_runner):
    eager = EagerRunner({"x2": random_models["x2"]})
    batch = _batch(1)
    torch.testing.assert_close(eager("x2", batch), torch_runner("x2", batch), rtol=1e-5, atol=1e-5)


def test_eager_runner_statistics_equal_torch_runner(random_models, torch_runner):
    eager = EagerRunner({"x2": random_models["x2"]})
    windows = _batch(2, (2, 3, 12, 12))
    mask = torch.zeros(2, 1, 12, 12, dtype=torch.bool)
    mask[:, :, 2:10, 2:10] = True
    a, b = eager.cca_moments("x2", windows, mask), torch_runner.cca_moments("x2", windows, mask)
    assert a.shape == (6, 3, 64)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    contrast = contrast_from_moments(a).float()[None].expand(2, -1, -1)
    torch.testing.assert_close(eager("x2", windows, contrast), torch_runner("x2", windows, contrast),
                               rtol=1e-5, atol=1e-5)


def test_onnx_available():
    assert onnx_available() == (pytest.importorskip("onnxruntime") is not None)


def test_onnx_runner_equals_torch_runner(onnx_runner, torch_runner):
    for seed, shape in ((3, (1, 3, 17, 23)), (4, (3, 3, 8, 5))):  # dynamic batch and size
        batch = _batch(seed, shape)
        out = onnx_runner("x2", batch)
        assert out.shape == (shape[0], 3, 2 * shape[2], 2 * shape[3]) and out.dtype == torch.float32
        torch.testing.assert_close(out, torch_runner("x2", batch), rtol=0, atol=1e-4)


def test_onnx_runner_is_an_engine_runner(onnx_runner, torch_runner, make_image):
    """The engine calls runner(name, batch, cca_contrast) and runner.cca_moments(...) on any backend."""
    batch = _batch(5, (2, 3, 12, 12))
    contrast = contrast_from_moments(torch_runner.cca_moments("x2", batch, torch.ones(2, 1, 12, 12, dtype=torch.bool)))
    contrast = contrast.float()[None].expand(2, -1, -1)
    torch.testing.assert_close(onnx_runner("x2", batch, contrast), torch_runner("x2", batch, contrast),
                               rtol=0, atol=1e-4)
    image = make_image(40, 36, seed=3)
    tiled_onnx = Upscaler(onnx_runner, **CLEAN_AS, tile_size=16).upscale(image, scale=2)
    tiled_torch = Upscaler(torch_runner, **CLEAN_AS, tile_size=16).upscale(image, scale=2)
    assert tiled_onnx.shape == (80, 72, 3)
    assert np.abs(tiled_onnx.astype(np.int16) - tiled_torch.astype(np.int16)).max() <= 1


def test_onnx_runner_moments_equal_torch(onnx_runner, torch_runner):
    """The statistics passes run as ONNX graphs too: same moments as PyTorch, with and without given statistics."""
    windows = _batch(6, (3, 3, 24, 20))
    mask = torch.zeros(3, 1, 24, 20, dtype=torch.bool)
    mask[:, :, 5:19, 4:17] = True
    expected = torch_runner.cca_moments("x2", windows, mask)
    got = onnx_runner.cca_moments("x2", windows, mask)
    assert got.shape == (6, 3, 64) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    contrast = contrast_from_moments(expected)
    torch.testing.assert_close(onnx_runner.cca_moments("x2", windows, mask, contrast),
                               torch_runner.cca_moments("x2", windows, mask, contrast), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="selects no pixel"):
        onnx_runner.cca_moments("x2", windows, torch.zeros_like(mask))


@pytest.mark.parametrize(("kind", "block"), [("head", 0), ("block", 0), ("block", 3), ("tail", 0), ("tail_held", 0)])
def test_onnx_runner_network_parts_equal_torch(random_models, kind, block):
    """IMDN_AS's parts (the whole-image pass in bands) run as ONNX graphs too, with the same results."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install .[onnx])")
    from model.backends import OnnxRunner

    models = {"as": random_models["as"]}
    torch.manual_seed(7)
    maps = [torch.rand(1, 64, 6, 9).half() for _ in range(4)]
    image, contrast, own = torch.rand(1, 3, 24, 36), torch.rand(1, 64), torch.tensor([1, 5, 2, 8])
    finish = (maps[0], maps[1], contrast, maps[2])
    inputs = {"head": (image,), "tail": (*finish, image), "tail_held": (*finish, maps[3], image)}.get(
        kind, (maps[0], own) if block == 0 else (*finish, own))
    expected = TorchRunner(models).run_part("as", kind, block, *inputs)
    got = OnnxRunner(models, threads=1).run_part("as", kind, block, *inputs)
    assert [(t.shape, t.dtype) for t in got] == [(t.shape, t.dtype) for t in expected]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-3, atol=2e-3)


def test_export_onnx_writes_file(random_models, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install .[onnx])")
    path = tmp_path / "x3.onnx"
    data = export_onnx(random_models["x3"], path=path)
    assert path.read_bytes() == data
    graph = onnx.load_from_string(data).graph
    assert [i.name for i in graph.input][0] == "lr" and [o.name for o in graph.output] == ["sr"]


def test_load_models_from_folder(tmp_path):
    torch.manual_seed(6)
    from model.imdn import build_model

    originals = {name: build_model(name) for name in ("x2", "as")}
    for name, model in originals.items():
        save_weights(model, tmp_path / f"imdn_{name}.safetensors")
    loaded = load_models(["x2", "as"], str(tmp_path))
    assert loaded.keys() == {"x2", "as"}
    for name, model in loaded.items():
        assert not model.training
        for key, value in model.state_dict().items():
            assert torch.equal(value, originals[name].state_dict()[key])


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda:0")


def _resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_onnx_runner_release_memory_returns_the_arena(onnx_runner):
    """The shared arena keeps a big tile's buffers for the next run, and release_memory hands them back."""
    big = _batch(3, (1, 3, 400, 400))
    expected = onnx_runner("x2", big)  # ~0.4 GB of activations at ~2.8 KB per input pixel
    held = _resident_bytes()
    onnx_runner.release_memory()
    assert _resident_bytes() < held - 200 * 2**20
    torch.testing.assert_close(onnx_runner("x2", big), expected)  # and it still runs, the same


ARENA_CAP_PROBE = """
import torch
from model.backends import OnnxRunner
from model.imdn import build_model
torch.manual_seed(0)
runner = OnnxRunner({"x2": build_model("x2").eval()}, threads=1, arena_limit_bytes=300 * 2**20)
for side in (200, 300, 250, 300):  # each fits the cap alone, not beside the buffers of the one before
    runner("x2", torch.rand(1, 3, side, side))
try:
    runner("x2", torch.rand(1, 3, 420, 420))  # ~0.4 GB: more than the cap even when empty
except MemoryError as exc:
    print("MemoryError", exc)
"""


def test_onnx_runner_arena_limit_hands_back_then_reports_out_of_memory():
    """A full arena is emptied and the run retried; a run bigger than the cap is a MemoryError, which the
    engine answers with smaller tiles (the arena is per process: a fresh one)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", ARENA_CAP_PROBE], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("MemoryError ONNX Runtime's arena limit is too small"), done.stdout
