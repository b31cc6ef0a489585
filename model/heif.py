"""HEIF (HEIC) and AVIF: the HEIF plugin's registration, the sizes an ISO-BMFF file claims before any decoder
reads it (its `ispe` properties, and an AVIF's AV1 sequence headers, which libavif obeys over `ispe`), and
HEIC's 10/12-bit samples kept at 16 bits.

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
    """The (width, height) of the largest image an ISO-BMFF file claims to hold, in its `ispe` properties or
    in the AV1 sequence headers of its items (which libavif decodes whatever `ispe` says), or None."""
    sizes = claimed_sizes(data) + av1_frame_limits(data)
    return max(sizes, key=lambda wh: wh[0] * wh[1]) if sizes else None


def _uint(data: bytes, pos: int, size: int) -> int:
    if size not in (0, 2, 4, 8) or pos + size > len(data):
        raise ValueError("a field outside its box")
    return int.from_bytes(data[pos : pos + size], "big") if size else 0


def item_extents(data: bytes) -> list[tuple[int, int]]:
    """(file offset, length) of each item's extents, from the `iloc` box (items in the file itself or in
    `idat`); bounded by MAX_BOXES entries. Damage ends the list."""
    budget = [MAX_BOXES]
    metas = [(start + 4, end) for kind, start, end in _boxes(data, 0, len(data), budget) if kind == b"meta"]
    children = [box for start, end in metas for box in _boxes(data, start, end, budget)]
    idat = next(((start, end) for kind, start, end in children if kind == b"idat"), (0, 0))
    extents: list[tuple[int, int]] = []
    for kind, start, end in children:
        if kind != b"iloc":
            continue
        try:
            version, pos = data[start], start + 4
            offset_size, length_size = data[pos] >> 4, data[pos] & 15
            base_size, index_size = data[pos + 1] >> 4, (data[pos + 1] & 15 if version in (1, 2) else 0)
            wide = 4 if version == 2 else 2
            count, pos = _uint(data, pos + 2, wide), pos + 2 + wide
            for _ in range(min(count, MAX_BOXES)):
                pos += wide  # item_ID
                method = _uint(data, pos, 2) & 15 if version in (1, 2) else 0
                pos += (2 if version in (1, 2) else 0) + 2  # construction method, data reference index
                base = _uint(data, pos, base_size)
                extent_count, pos = _uint(data, pos + base_size, 2), pos + base_size + 2
                for _ in range(min(extent_count, MAX_BOXES - len(extents))):
                    pos += index_size
                    offset, length = _uint(data, pos, offset_size), _uint(data, pos + offset_size, length_size)
                    pos += offset_size + length_size
                    origin = {0: 0, 1: idat[0]}.get(method)
                    if origin is not None and pos <= end:
                        extents.append((origin + base + offset, length))
        except (IndexError, ValueError):
            pass  # the decoder reports the damage, if it matters
    return extents


class _Bits:
    """Big-endian bits of a byte string, as AV1 headers are written."""

    def __init__(self, data: bytes) -> None:
        self.value, self.left = int.from_bytes(data, "big"), len(data) * 8

    def read(self, count: int) -> int:
        if count > self.left:
            raise ValueError("the header ends early")
        self.left -= count
        return (self.value >> self.left) & ((1 << count) - 1)

    def uvlc(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros >= 32:
                return (1 << 32) - 1
        return self.read(zeros) + (1 << zeros) - 1


def sequence_header_size(payload: bytes) -> tuple[int, int]:
    """(max_frame_width, max_frame_height) of an AV1 sequence header OBU's payload (AV1 spec 5.5): no frame
    of the sequence can be larger, and dav1d decodes whatever size it says."""
    bits = _Bits(payload[:64])
    bits.read(3)  # seq_profile
    bits.read(1)  # still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)
    else:
        decoder_model, delay_bits = 0, 0
        if bits.read(1):  # timing_info_present_flag
            bits.read(64)
            if bits.read(1):  # equal_picture_interval
                bits.uvlc()
            decoder_model = bits.read(1)
            if decoder_model:
                delay_bits = bits.read(5) + 1
                bits.read(32 + 5 + 5)
        display_delay = bits.read(1)
        for _ in range(bits.read(5) + 1):  # operating points
            bits.read(12)
            if bits.read(5) > 7:
                bits.read(1)
            if decoder_model and bits.read(1):
                bits.read(2 * delay_bits + 1)
            if display_delay and bits.read(1):
                bits.read(4)
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos + i >= len(data):
            raise ValueError("the size ends early")
        value |= (data[pos + i] & 0x7F) << (7 * i)
        if not data[pos + i] & 0x80:
            return value, pos + i + 1
    raise ValueError("a size longer than 8 bytes")


def av1_frame_limits(data: bytes) -> list[tuple[int, int]]:
    """The frame sizes the AV1 sequence headers in an AVIF's items allow; [] for other files."""
    if data[4:8] != b"ftyp" or not any(brand in data[8:64] for brand in (b"avif", b"avis")):
        return []
    sizes = []
    obus = MAX_BOXES
    for offset, length in item_extents(data):
        pos, end = offset, min(len(data), offset + length if length else len(data))
        while pos + 2 <= end and obus > 0:
            obus -= 1
            header = data[pos]
            if not header & 0x02:  # no size field: the OBU runs to the end; nothing more to walk
                break
            try:
                size, start = _leb128(data, pos + 1 + (header >> 2 & 1))  # after an extension byte, if any
                if (header >> 3) & 15 == 1:  # OBU_SEQUENCE_HEADER
                    sizes.append(sequence_header_size(data[start : min(start + size, end)]))
            except ValueError:
                break
            pos = start + size
    return sizes


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
