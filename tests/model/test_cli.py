"""`imdn-sr upscale`, the local command line, on a real folder with the real engine (random weights)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.cli import main
from tests.samples import heic, photo_jpeg, random_weights, smooth_image


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights(tmp_path_factory.mktemp("weights"))


def png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (40, 90, 200, 0)[: len(mode)]).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upscale_names_every_skipped_file_and_why(weights: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "scans"
    src.mkdir()
    (src / "a.png").write_bytes(png("RGB", (12, 10)))
    (src / "notes.txt").write_text("not an image")
    (src / "old").mkdir()
    out = tmp_path / "out"
    code = main(["upscale", str(src), "-o", str(out), "--weights", str(weights), "--device", "cpu"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"skipped: {src / 'notes.txt'}: not an image file name (takes .avif, .bmp, .gif, .heic, .heif, .jpeg" in err
    assert f"skipped: {src / 'old'}: a folder (only the images directly inside a given folder are read)" in err
    assert "1 written, 2 skipped, 0 failed" in err
    assert [p.name for p in out.iterdir()] == ["a_x2.png"]


def test_upscale_jpeg_of_transparent_image_says_alpha_was_flattened(weights: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "logo.png").write_bytes(png("RGBA", (12, 10)))  # fully transparent
    code = main(["upscale", str(tmp_path / "logo.png"), "-o", str(tmp_path / "out"), "--format", "jpeg",
                 "--weights", str(weights), "--device", "cpu"])
    assert code == 0
    assert "alpha flattened onto white" in capsys.readouterr().out
    out = np.asarray(Image.open(tmp_path / "out" / "logo_x2.jpeg"))
    assert out.shape == (20, 24, 3) and out.min() >= 245


def test_upscale_heic_and_photo_metadata(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A phone's HEIC and a camera's JPEG from a folder, AVIF out with everything but location: orientation
    applied once and reset, sizes the output's."""
    src = tmp_path / "phone"
    src.mkdir()
    (src / "IMG_1.heic").write_bytes(heic(smooth_image(10, 12)))
    (src / "DSC_2.jpg").write_bytes(photo_jpeg())  # stored 24x16, orientation 6
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--scale", "2", "--weights", str(weights), "--device", "cpu",
                 "--format", "avif", "--metadata", "nogps"]) == 0
    with Image.open(out / "IMG_1_x2.avif") as img:
        assert img.size == (24, 20)
    with Image.open(out / "DSC_2_x2.avif") as img:
        exif = img.getexif()
        assert img.size == (32, 48) and exif[0x010F] == "TestCam" and exif.get(0x0112) == 1
        assert exif.get_ifd(0x8769)[0xA002] == 32 and not exif.get_ifd(0x8825)
    assert "metadata left out: iptc (AVIF has no place for it)" in capsys.readouterr().out  # tqdm.write
