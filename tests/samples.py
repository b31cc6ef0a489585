"""Test inputs shared by every test folder: photo-like images and randomly initialised weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def smooth_image(height: int, width: int, channels: int = 3, seed: int = 0, noise: float = 4.0) -> np.ndarray:
    """A natural-ish (H,W,C) uint8 image: low-frequency waves and gradients plus a little noise
    (it compresses like a photo and gives the networks something to do)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for _ in range(channels):
        fy, fx, phase = rng.uniform(0.02, 0.12), rng.uniform(0.02, 0.12), rng.uniform(0, 2 * np.pi)
        plane = 128 + 60 * np.sin(fy * y + fx * x + phase) + 40 * (x / max(1, width) - y / max(1, height))
        planes.append(plane + rng.normal(0, noise, (height, width)))
    return np.clip(np.stack(planes, axis=-1), 0, 255).round().astype(np.uint8)


def random_weights(folder: Path, names: tuple[str, ...] | None = None, seed: int = 0) -> Path:
    """Randomly initialised safetensors in the layout IMDN_WEIGHTS expects (default: every model).

    Tests check plumbing, not image quality, so they need not wait for the trained weights.
    """
    import torch

    from model.imdn import MODEL_NAMES, build_model
    from model.weights import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    for name in names or MODEL_NAMES:
        torch.manual_seed(seed)
        save_weights(build_model(name), folder / f"imdn_{name}.safetensors")
    return folder


def many_ifd_tiff(count: int) -> bytes:
    """A little-endian TIFF of `count` chained one-pixel 8-bit gray IFDs (~100 bytes each, all sharing one
    strip byte): Pillow's n_frames walks the chain at a cost that grows with the square of its length."""
    import struct

    # width, height, bits, compression, photometric, strip offset (8: the pixel), rows per strip, strip bytes
    entries = [(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (278, 3, 1, 1), (279, 4, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    size = len(ifd) + 4
    parts = [b"II*\x00" + struct.pack("<I", 9) + b"\x80"]  # header (first IFD at 9), the pixel at 8
    for i in range(count):
        parts.append(ifd + struct.pack("<I", 9 + (i + 1) * size if i < count - 1 else 0))
    return b"".join(parts)


def many_frame_gif(count: int) -> bytes:
    """A 1x1 GIF of `count` frames, 15 bytes each (an image descriptor and one LZW block)."""
    import struct

    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * count + b"\x3b"


def animated_file(fmt: str, frames: list[np.ndarray], durations: list[int], loop: int | None = 0) -> bytes:
    """An animated GIF, WEBP (lossless) or PNG (APNG) of these (H,W,3|4) uint8 frames, as Pillow writes them;
    loop None: a GIF without a loop extension (played once)."""
    import io

    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    options: dict[str, object] = {"save_all": True, "append_images": images[1:], "duration": durations}
    if loop is not None:
        options["loop"] = loop
    if fmt == "WEBP":
        options["lossless"] = True
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, **options)
    return buffer.getvalue()


def read_animation(data: bytes) -> tuple[str, int, list[int], int | None, tuple[int, int]]:
    """(format, frames, durations in ms, loop or None, (width, height)) of an encoded animation, every frame read."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(data))
    durations = []
    for index in range(getattr(img, "n_frames", 1)):
        img.seek(index)
        img.load()
        durations.append(int(img.info.get("duration") or 0))
    return img.format or "", len(durations), durations, img.info.get("loop"), img.size
