"""An image file's structure walked from its bytes, without decoding: a JPEG's scans, a GIF's images, a TIFF's
IFDs. Each walk reads only lengths and offsets, is linear in the file and stops counting past a limit, so
model/imageio.py can refuse a costly file before any decoder (or Pillow's own quadratic walks) sees it."""

from __future__ import annotations

import re
import struct


def jpeg_scans(data: bytes, stop_after: int) -> int:
    """Count a JPEG's scans (SOS markers) from its bytes, without decoding; stops counting past `stop_after`."""
    pos, scans = 2, 0
    while pos + 4 <= len(data) and scans <= stop_after:
        if data[pos] != 0xFF:
            break  # not a marker where one must be: leave the damage to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xD8):  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next real marker
            scans += 1
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


# In entropy-coded data, 0xFF is followed by 0x00 (stuffing), 0xFF (fill) or a restart marker; anything
# else is the next segment.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")

# Animations and multi-page files: the first frame is used and the others only counted (X-Frames-Dropped).
# Pillow's n_frames walks every frame, a TIFF's IFD chain at a cost that grows with the square of its length
# (48k one-pixel IFDs: 39 s of CPU; a GIF of 1.3M frames: 14 s). GIFs and TIFFs are counted here from the
# file's structure instead, stopping past the limit; PNG (acTL), WebP and MPO declare their count up front.
MAX_FRAMES = 1000


def _skip_gif_sub_blocks(data: bytes, pos: int) -> int:
    """The position after a chain of GIF data sub-blocks (length byte, bytes; a zero length ends it)."""
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if not size:
            break
    return pos


def gif_frames(data: bytes, stop_after: int) -> int:
    """Count a GIF's images (as Pillow does: image descriptors before the trailer) without decoding any;
    stops counting past `stop_after`. Damage ends the count: the decoder reports it, if it matters."""
    if len(data) < 13:
        return 1
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the global colour table
    frames = 0
    while pos < len(data) and frames <= stop_after:
        block = data[pos]
        pos += 1
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: a label, then sub-blocks
            pos = _skip_gif_sub_blocks(data, pos + 1)
        elif block == 0x2C:  # image descriptor, local colour table, LZW code size, then the image's sub-blocks
            if pos + 9 > len(data):
                break
            flags = data[pos + 8]
            pos += 9 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            pos = _skip_gif_sub_blocks(data, pos + 1)
            frames += 1
        # anything else is skipped a byte at a time, as Pillow does
    return max(frames, 1)


def tiff_frames(data: bytes, stop_after: int) -> int:
    """Count a TIFF's (or BigTIFF's) IFDs along their chain, as Pillow does (a loop ends it), reading only
    each IFD's entry count and next offset; stops counting past `stop_after`."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 16:
        return 1
    (version,) = struct.unpack(order + "H", data[2:4])
    if version == 43:  # BigTIFF: 8-byte counts and offsets, 20-byte entries
        count_fmt, offset_fmt, entry_size, first = "Q", "Q", 20, 8
    else:
        count_fmt, offset_fmt, entry_size, first = "H", "I", 12, 4
    count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
    (offset,) = struct.unpack_from(order + offset_fmt, data, first)
    seen: set[int] = set()
    frames = 0
    while offset and offset not in seen and frames <= stop_after and offset + count_size <= len(data):
        seen.add(offset)
        frames += 1
        (entries,) = struct.unpack_from(order + count_fmt, data, offset)
        next_at = offset + count_size + entries * entry_size
        if next_at + offset_size > len(data):
            break
        (offset,) = struct.unpack_from(order + offset_fmt, data, next_at)
    return max(frames, 1)
