"""Test inputs shared by every test folder: photo-like images and randomly initialised weights."""

from __future__ import annotations

import functools
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


# --- photos as phones and cameras write them: metadata, HEIC, AVIF --------------------------------------

# XMP as cameras and editors write it: properties as attributes and as elements, location included.
PHOTO_XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
             b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
             b'xmlns:dc="http://purl.org/dc/elements/1.1/" tiff:Orientation="6" exif:PixelXDimension="24" '
             b'exif:GPSLatitude="52,22.5N"><exif:PixelYDimension>16</exif:PixelYDimension>'
             b'<exif:GPSLongitude>4,53.2E</exif:GPSLongitude><dc:creator>A. Photographer</dc:creator>'
             b'</rdf:Description></rdf:RDF></x:xmpmeta>')
# IPTC-IIM: record 2 version, then 2:116 copyright notice.
PHOTO_IPTC = b"\x1c\x02\x00\x00\x02\x00\x04" + b"\x1c\x02\x74\x00\x0d(c) A. Person"


def photo_exif(orientation: int = 6, width: int = 24, height: int = 16, padding: int = 0) -> bytes:
    """An EXIF block as a camera writes it: make, copyright, orientation, pixel dimensions, date and GPS
    (52.37 N, 4.89 E); `padding` bytes of maker note make it as large as asked."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x8298] = "TestCam", "Model 1", "(c) A. Person"
    exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    sub[0xA002], sub[0xA003], sub[0x9003] = width, height, "2024:05:01 12:00:00"
    if padding:
        sub[0x927C] = b"\x00" * padding  # MakerNote
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 22.0, 12.0), "E", (4.0, 53.0, 24.0)
    return exif.tobytes()


@functools.cache
def srgb_profile() -> bytes:
    """A real sRGB ICC profile, made by LittleCMS (once: it holds its time of creation)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo_jpeg(height: int = 16, width: int = 24, orientation: int = 6) -> bytes:
    """A JPEG stored width x height with EXIF (orientation, GPS), XMP, IPTC (APP13) and an ICC profile."""
    import io

    from PIL import Image

    from model.metadata import Metadata, save_options

    options = save_options(Metadata(photo_exif(orientation, width, height), PHOTO_XMP, PHOTO_IPTC), "jpeg")
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(height, width)).save(buffer, "JPEG", quality=92, icc_profile=srgb_profile(),
                                                      **options)
    return buffer.getvalue()


def heic(array: np.ndarray, **options: object) -> bytes:
    """(H,W,C) uint8 -> HEIC written by pillow-heif (libheif, x265); uint16 -> a 10-bit HEIC."""
    import io

    import pillow_heif
    from PIL import Image

    import model.heif  # noqa: F401 - registers the HEIF plugin with Pillow, as the service does

    buffer = io.BytesIO()
    if array.dtype == np.uint16:
        mode = {3: "RGB;16", 4: "RGBA;16"}[array.shape[2]]
        deep = pillow_heif.from_bytes(mode=mode, size=(array.shape[1], array.shape[0]), data=array.tobytes())
        deep.save(buffer, format="HEIF", quality=-1, **options)
    else:
        Image.fromarray(array).save(buffer, format="HEIF", quality=90, **options)
    return buffer.getvalue()


def avif(array: np.ndarray, **options: object) -> bytes:
    """(H,W,C) uint8 -> AVIF written by Pillow (libavif)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="AVIF", quality=90, **options)
    return buffer.getvalue()


def with_claimed_size(data: bytes, width: int, height: int) -> bytes:
    """A HEIF/AVIF whose every `ispe` property claims width x height (the coded data stays as it was)."""
    import struct

    out = bytearray(data)
    at = out.find(b"ispe")
    while at >= 0:
        struct.pack_into(">II", out, at + 8, width, height)  # after the type, version and flags
        at = out.find(b"ispe", at + 4)
    return bytes(out)
