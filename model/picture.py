"""Pictures: the network's view of an image, and every colour mode to and from it.

RGB and L run through the network (L as three equal channels), alpha is carried beside the
colour and resized with bicubic, palettes become RGB(A), 16-bit images are processed in float
and come back as 16-bit. The ICC profile is carried to the output if it parses as ICC (LittleCMS).
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageCms

from model.metadata import Metadata

log = logging.getLogger(__name__)


class ImageDecodeError(ValueError):
    """The bytes are not an image this service can read (unknown format, truncated, corrupt)."""


class UnsupportedImageError(ImageDecodeError):
    """Not an image format this service reads (or nothing at all), or a pixel layout it does not support."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than allowed; raised before its pixels are decoded."""


@dataclass
class Picture:
    """An image ready for the network.

    color: (3,H,W) samples; alpha: (H,W) samples or None. Samples are uint8 for
    8-bit images (a quarter of float32's memory: a 16 MP photo holds 48 MB, not
    192 MB; ``unit_float`` converts the windows the network reads), float32 in
    [0,1] otherwise. gray: came in as one channel and goes out as one; bits: 8
    or 16 per channel of the output.
    """

    color: torch.Tensor
    alpha: torch.Tensor | None = None
    gray: bool = False
    bits: int = 8
    icc_profile: bytes | None = None
    frames: int = 1
    metadata: Metadata | None = None  # EXIF, XMP, IPTC as uploaded (model/metadata.py)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.color.shape[1]), int(self.color.shape[2])

    @property
    def channels(self) -> int:
        """Channels of the output image: 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA)."""
        return (1 if self.gray else 3) + (self.alpha is not None)

    @property
    def mode(self) -> str:
        if self.bits == 16:
            return "I;16" if self.channels == 1 else {2: "LA", 3: "RGB", 4: "RGBA"}[self.channels] + ";16"
        return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[self.channels]


def unit_float(samples: torch.Tensor) -> torch.Tensor:
    """Picture samples (uint8, or float in [0,1]) -> float32 in [0,1]."""
    return samples.float().div_(255) if samples.dtype == torch.uint8 else samples


def valid_icc(profile: bytes | None) -> bytes | None:
    """The profile if LittleCMS parses it as ICC, else None (logged): outputs only carry real profiles,
    never arbitrary upload bytes (an 'ICC profile' of <html><script>... copied into a JPEG)."""
    if not profile:
        return None
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(profile))
        # LittleCMS reads tags lazily: a cut-off profile opens; its header says how long it should be.
        declared = struct.unpack(">I", profile[:4])[0]
        if declared != len(profile):
            raise ValueError(f"the header says {declared} bytes")
    except (OSError, ValueError, TypeError) as exc:
        log.warning("dropped an embedded ICC profile that does not parse as ICC (%d bytes: %s)", len(profile), exc)
        return None
    return profile


def picture_from_array(array: np.ndarray, icc_profile: bytes | None = None) -> Picture:
    """(H,W), (H,W,1..4) uint8/uint16 (or float in [0,1]) -> Picture. Channels: L, LA, RGB, RGBA.

    An ICC profile is kept only if it parses as one."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise UnsupportedImageError(f"expected an (H,W[,C]) array with 1-4 channels, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageDecodeError(f"image has no pixels ({array.shape[1]}x{array.shape[0]})")
    if array.dtype == np.uint8:
        with warnings.catch_warnings():  # PIL's arrays are read-only; nothing writes into Picture samples
            warnings.simplefilter("ignore", UserWarning)
            bits, values = 8, torch.from_numpy(np.ascontiguousarray(array))
    elif array.dtype == np.uint16:
        bits, values = 16, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        bits, values = 8, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).clamp_(0, 1)
    else:
        raise UnsupportedImageError(f"unsupported pixel type {array.dtype}; use uint8, uint16 or float")
    gray = array.shape[2] in (1, 2)
    has_alpha = array.shape[2] in (2, 4)
    color = values[:, :, :1].expand(-1, -1, 3) if gray else values[:, :, :3]
    alpha = values[:, :, -1].contiguous() if has_alpha else None
    return Picture(color.permute(2, 0, 1).contiguous(), alpha, gray, bits, valid_icc(icc_profile))


def _sixteen_bit_array(img: Image.Image) -> np.ndarray | None:
    """16-bit grayscale PNGs open as mode I/I;16; return their uint16 samples, else None."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        data = np.asarray(img)
        if img.mode == "I" and data.max(initial=0) > 65535:
            raise UnsupportedImageError("32-bit integer images are not supported")
        return data.astype(np.uint16)
    return None


def with_color_key(array: np.ndarray, key: object) -> np.ndarray:
    """Gray or RGB (H,W[,C]) + a tRNS colour key -> the same with an alpha channel (0 where the key matches)."""
    planes = array[:, :, None] if array.ndim == 2 else array
    values = key if isinstance(key, tuple) else (key,)
    top = np.iinfo(planes.dtype).max
    if len(values) != planes.shape[2]:
        return array  # a key that does not fit the layout: ignore it, as decoders do
    if not all(isinstance(v, int) and 0 <= v <= top for v in values):
        raise ImageDecodeError(f"the PNG's tRNS transparency key {values} does not fit its "
                               f"{planes.dtype.itemsize * 8}-bit samples")
    key_values = np.asarray(values, dtype=planes.dtype)
    alpha = np.where((planes == key_values).all(axis=2), 0, top).astype(planes.dtype)
    return np.concatenate([planes, alpha[:, :, None]], axis=2)


def picture_from_pil(img: Image.Image) -> Picture:
    """PIL image (any common mode) -> Picture; the ICC profile is kept."""
    icc = img.info.get("icc_profile") or None
    key = img.info.get("transparency")  # PNG tRNS colour key for gray/RGB images
    sixteen = _sixteen_bit_array(img)
    if sixteen is not None:
        return picture_from_array(sixteen if key is None else with_color_key(sixteen, key), icc)
    if img.mode in ("L", "RGB") and key is not None and not isinstance(key, bytes):
        return picture_from_array(with_color_key(np.asarray(img), key), icc)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
        icc = None  # a CMYK profile does not describe the RGB result
    elif img.mode in ("1", "L"):
        img = img.convert("L")
    elif img.mode in ("LA", "La", "PA"):
        img = img.convert("LA")
    elif img.mode in ("RGBA", "RGBa"):
        img = img.convert("RGBA")
    elif img.mode == "F":
        return picture_from_array(np.clip(np.asarray(img), 0, 1), icc)
    elif img.mode != "RGB":
        img = img.convert("RGB")
    return picture_from_array(np.asarray(img), icc)


# The documented input formats (Pillow's names); every other plugin stays unreachable. Cameras' JPEGs
# with several pictures open as MPO (a JPEG).


def to_array(color: torch.Tensor, alpha: torch.Tensor | None, gray: bool, bits: int) -> np.ndarray:
    """color (3,h,w), alpha (h,w) or None, as float or Picture samples -> (h,w,C) uint8/uint16, C = 1..4."""
    color = unit_float(color)
    planes = [color.mean(dim=0, keepdim=True)] if gray else [color]
    if alpha is not None:
        planes.append(unit_float(alpha)[None])
    # cat makes a new tensor, so the scaling can be in place (a large band is tens of MB).
    stacked = torch.cat(planes).clamp_(0, 1).mul_(65535 if bits == 16 else 255).round_().permute(1, 2, 0)
    if bits == 16:
        return stacked.to(torch.int32).numpy().astype(np.uint16)
    return stacked.to(torch.uint8).numpy()


def array_to_pil(array: np.ndarray, icc_profile: bytes | None = None) -> Image.Image:
    """(H,W,C) uint8/uint16 from to_array -> PIL image (16-bit colour is reduced to 8-bit, a PIL limit)."""
    channels = array.shape[2]
    if array.dtype == np.uint16:
        if channels == 1:
            img = Image.fromarray(array[:, :, 0].astype(np.uint16))  # uint16 -> mode I;16
        else:
            array = (array.astype(np.uint32) * 255 + 32767) // 65535
            return array_to_pil(array.astype(np.uint8), icc_profile)
    else:
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        img = Image.fromarray(array[:, :, 0] if channels == 1 else array, mode=mode)
    if icc_profile:
        img.info["icc_profile"] = icc_profile
    return img
