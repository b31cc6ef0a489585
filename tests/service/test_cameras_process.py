"""Per-camera weights end to end: `imdn-sr calibrate` on a few pairs, then a real service process serves the
result as model=as:NAME beside its own models (IMDN_CAMERAS), and lists it."""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFilter

from model.backends import TorchRunner
from model.cli import main as cli_main
from model.engine import Upscaler
from model.imageio import decode
from model.weights import load_model

URL = "/v1/superresolve"
PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, make_image: Callable[..., bytes]) -> Path:
    """my_camera.safetensors from two tiny pairs (the camera: a slight blur), by the command users run."""
    pairs = tmp_path_factory.mktemp("pairs")
    for folder in ("HR", "LR_same_size"):
        (pairs / folder).mkdir()
    for seed in range(2):
        hr = Image.open(io.BytesIO(make_image(64, 64, seed=seed))).convert("RGB")
        hr.save(pairs / "HR" / f"shot{seed}.png")
        hr.filter(ImageFilter.GaussianBlur(1.2)).save(pairs / "LR_same_size" / f"shot{seed}.png")
    out = tmp_path_factory.mktemp("cameras") / "my_camera.safetensors"
    code = cli_main(["calibrate", str(pairs), "-o", str(out), "--iters", "2", "--patch", "32", "--batch", "2",
                     "--threads", "1", "--data", str(pairs / "no-training-images")])
    assert code == 0 and out.is_file()
    return out


def test_calibrated_camera_is_served_as_an_extra_model(launch_service: Callable[..., AbstractContextManager],
                                                       make_image: Callable[..., bytes], calibrated: Path) -> None:
    data = make_image(40, 30, seed=7)
    with launch_service({"IMDN_MODELS": "as", "IMDN_CAMERAS": str(calibrated)}) as service:
        models = httpx.get(f"{service.url}/v1/models", timeout=10).json()["models"]
        own = httpx.post(f"{service.url}{URL}?scale=2&model=as", content=data, headers=PNG, timeout=60)
        camera = httpx.post(f"{service.url}{URL}?scale=2&model=as:my_camera", content=data, headers=PNG, timeout=60)
        unknown = httpx.post(f"{service.url}{URL}?scale=2&model=as:other", content=data, headers=PNG, timeout=60)
    listed = {m["name"]: m for m in models}
    assert set(listed) == {"as", "as:my_camera"} and listed["as:my_camera"]["weights"] == "my_camera.safetensors"
    assert "camera" in listed["as:my_camera"]["scale"]
    assert camera.status_code == 200 and camera.headers["x-model"] == "as:my_camera"
    engine = Upscaler(TorchRunner({"as:my_camera": load_model("as:my_camera", calibrated)}), budget_bytes=2**34,
                      available=["as:my_camera"])
    expected = engine.upscale(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), scale=2, model="as:my_camera")
    got = np.asarray(decode(camera.content).color.permute(1, 2, 0)).astype(np.int16)
    assert np.abs(got - expected.astype(np.int16)).max() <= 1  # the camera's weights ran
    assert own.status_code == 200 and own.content != camera.content  # and not the service's own IMDN_AS
    assert unknown.status_code == 400 and "as:other" in unknown.json()["detail"]
