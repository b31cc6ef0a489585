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


@pytest.mark.parametrize(("options", "size", "name"), [
    (["--scale", "1"], (12, 10), "a_x1.png"),  # restore only: the photo's own size, IMDN_AS
    (["--width", "48", "--height", "48", "--fit", "contain"], (48, 40), "a_48x48.png"),
    (["--width", "48", "--height", "48", "--fit", "cover"], (48, 48), "a_48x48.png"),
])
def test_upscale_restore_only_and_fit(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      options: list[str], size: tuple[int, int], name: str) -> None:
    source = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(source).save(tmp_path / "a.png")
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--weights", str(weights),
                 "--device", "cpu", "--backend", "torch", *options])
    assert code == 0, capsys.readouterr().err
    out = Image.open(tmp_path / "out" / name)
    assert out.size == size
    if options[:2] == ["--scale", "1"]:
        assert "as)" in capsys.readouterr().out
        assert np.abs(np.asarray(out, np.int16) - source).max() > 0


def test_upscale_an_animation_keeps_every_frame(weights: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tests.samples import animated_file, read_animation

    frames = [np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8) for seed in range(3)]
    (tmp_path / "anim.gif").write_bytes(animated_file("GIF", frames, [100, 200, 300], loop=0))
    options = ["--weights", str(weights), "--device", "cpu", "--backend", "torch", "--scale", "2"]
    assert main(["upscale", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "out"), "--format", "webp",
                 *options]) == 0
    assert "3 frames" in capsys.readouterr().out
    assert read_animation((tmp_path / "out" / "anim_x2.webp").read_bytes()) == ("WEBP", 3, [100, 200, 300], 0,
                                                                                 (16, 12))
    assert main(["upscale", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "first"), "--frames", "first",
                 *options]) == 0
    assert read_animation((tmp_path / "first" / "anim_x2.png").read_bytes())[1] == 1
    assert main(["upscale", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "jpeg"), "--format", "jpeg",
                 *options]) == 1
    assert "jpeg cannot hold an animation" in capsys.readouterr().err
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
