"""HEIF (HEIC) and AVIF: the HEIF plugin's registration, the size an ISO-BMFF file claims before any decoder
reads it, and HEIC's 10/12-bit samples kept at 16 bits.

Pillow reads and writes AVIF itself (libavif, 8 bits per sample); HEIC comes from pillow-heif (libheif), whose
opener is registered here, once, for every module that opens images. Its thumbnails, depth and auxiliary
images are never read: only the primary image is upscaled.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pillow_heif

pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# A file of boxes nests a few levels deep; a hostile one may hold millions of tiny boxes or nest without end.
MAX_BOXES = 4096
# The boxes on the way from the top of the file to the image properties: meta / iprp / ipco / ispe.
PROPERTY_PATH = (b"meta", b"iprp", b"ipco")
FULL_BOXES = frozenset({b"meta"})  # boxes whose children start after a version and flags (4 bytes)


def _boxes(data: bytes, start: int, end: int, budget: list[int]) -> list[tuple[bytes, int, int]]:
    """The boxes between start and end as (type, payload start, payload end); stops at the first box whose
    size does not fit its parent (the decoder then reports the damage) or when `budget` runs out."""
    found = []
    pos = start
    while pos + 8 <= end and budget[0] > 0:
        budget[0] -= 1
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:  # a 64-bit size follows the type
            if pos + 16 > end:
                break
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:  # to the end of the parent
            size = end - pos
        if size < header or pos + size > end:
            break
        found.append((kind, pos + header, pos + size))
        pos += size
    return found


def claimed_sizes(data: bytes) -> list[tuple[int, int]]:
    """Every (width, height) an ISO-BMFF image file's `ispe` properties claim (the primary image, its grid
    tiles, alpha, thumbnails), read from the boxes alone; [] for anything that is not such a file."""
    if data[4:8] != b"ftyp":
        return []
    budget = [MAX_BOXES]
    level = [(b"", 0, len(data))]
    for wanted in PROPERTY_PATH:
        level = [(kind, start + (4 if kind in FULL_BOXES else 0), end)
                 for _, parent_start, parent_end in level
                 for kind, start, end in _boxes(data, parent_start, parent_end, budget) if kind == wanted]
    sizes = []
    for _, start, end in level:
        for kind, prop_start, prop_end in _boxes(data, start, end, budget):
            if kind == b"ispe" and prop_end - prop_start >= 12:  # version and flags, width, height
                sizes.append(struct.unpack_from(">II", data, prop_start + 4))
    return sizes


def largest_claim(data: bytes) -> tuple[int, int] | None:
    """The (width, height) of the largest image an ISO-BMFF file claims to hold, or None."""
    sizes = claimed_sizes(data)
    return max(sizes, key=lambda wh: wh[0] * wh[1]) if sizes else None


def decode_heif_deep(data: bytes) -> np.ndarray:
    """A 10- or 12-bit HEIC's primary image -> (H,W[,C]) uint16 over the full 0-65535 range, its transforms
    (rotation, mirror, crop) applied as libheif does for the 8-bit path."""
    heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
    bits = int(heif.info.get("bit_depth", 8))
    samples = np.asarray(heif)
    if samples.dtype != np.uint16 or bits <= 8:
        raise ValueError(f"expected more than 8 bits per sample, got {bits} bits as {samples.dtype}")
    # libheif hands the samples over shifted to the top of 16 bits; spread them over the whole range.
    top = (1 << bits) - 1
    spread = ((samples.astype(np.uint32) >> (16 - bits)) * 65535 + top // 2) // top
    return spread.astype(np.uint16)
