"""HEIC and AVIF decoding: the size claimed in the boxes, limits before any decoder runs, 10-bit samples kept,
damaged and hostile files refused as the other formats' are."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest

from model.heif import MAX_BOXES, av1_frame_limits, claimed_sizes, decode_heif_deep, item_extents, largest_claim
from model.imageio import decode, header_size, is_heif_family
from model.picture import ImageDecodeError, ImageTooLargeError, to_array
from tests.samples import avif, heic, smooth_image, with_claimed_size


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def ispe(width: int, height: int) -> bytes:
    return box(b"ispe", b"\x00\x00\x00\x00" + struct.pack(">II", width, height))


def heif_boxes(*properties: bytes, ftyp: bytes = b"heic") -> bytes:
    """ftyp, then meta (a full box) / iprp / ipco holding `properties`: the path claimed_sizes walks."""
    ipco = box(b"ipco", b"".join(properties))
    return box(b"ftyp", ftyp + b"\x00\x00\x00\x00mif1" + ftyp) + box(b"meta", b"\x00" * 4 + box(b"iprp", ipco))


def test_claims_of_real_files() -> None:
    image = smooth_image(40, 60)
    assert claimed_sizes(avif(image)) == [(60, 40)]
    # HEVC codes whole 64x64 blocks; the ispe of its one tile says so (the crop comes later).
    assert largest_claim(heic(image)) in {(60, 40), (64, 64)}
    assert claimed_sizes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40) == []


def test_claims_in_crafted_boxes() -> None:
    assert largest_claim(heif_boxes(ispe(10, 10), ispe(300, 200), ispe(20, 20))) == (300, 200)
    # A 64-bit box size, and a last box that runs to the end of its parent (size 0).
    ipco64 = struct.pack(">I4sQ", 1, b"ipco", 16 + 20) + ispe(7, 9)
    data = box(b"ftyp", b"avif\x00\x00\x00\x00") + box(b"meta", b"\x00" * 4 + box(b"iprp", ipco64))
    assert claimed_sizes(data) == [(7, 9)]
    to_end = box(b"ftyp", b"avif\x00\x00\x00\x00") + struct.pack(">I4s", 0, b"meta") + b"\x00" * 4 + \
        box(b"iprp", box(b"ipco", ispe(5, 6)))
    assert claimed_sizes(to_end) == [(5, 6)]


@pytest.mark.parametrize("data", [
    heif_boxes(ispe(3, 4))[:-6],  # cut inside the property
    heif_boxes(box(b"ispe", b"\x00" * 4 + b"\x00\x00")),  # too short to hold a size
    box(b"ftyp", b"heic") + struct.pack(">I4s", 4, b"meta"),  # a size smaller than its own header
    box(b"ftyp", b"heic") + struct.pack(">I4s", 0xFFFFFFF0, b"meta") + b"\x00" * 8,  # past the end
    box(b"ftyp", b"heic") + struct.pack(">I4sQ", 1, b"meta", 2**63),  # a 64-bit size past the end
], ids=["cut-property", "short-ispe", "tiny-size", "past-end", "huge-64-bit"])
def test_damaged_boxes_claim_nothing(data: bytes) -> None:
    assert claimed_sizes(data) == []


def test_a_flood_of_boxes_is_read_within_a_budget() -> None:
    ftyp = box(b"ftyp", b"heic\x00\x00\x00\x00")
    meta = box(b"meta", b"\x00" * 4 + box(b"iprp", box(b"ipco", ispe(9, 9))))
    assert claimed_sizes(ftyp + box(b"free", b"") * (MAX_BOXES - 10) + meta) == [(9, 9)]
    # Past the budget the walk stops: 200k empty boxes cost no more than 4096 do.
    assert claimed_sizes(ftyp + box(b"free", b"") * 200_000 + meta) == []


def test_heic_and_avif_decode() -> None:
    image = smooth_image(40, 60)
    for data in (heic(image), avif(image)):
        assert is_heif_family(data)
        picture = decode(data)
        assert picture.size == (40, 60) and picture.bits == 8
        assert header_size(data) == (40, 60)
        decoded = to_array(picture.color, picture.alpha, picture.gray, picture.bits).astype(int)
        assert np.abs(decoded - image).mean() < 8  # lossy at quality 90, but the same picture


def test_heic_alpha_is_kept() -> None:
    rgba = np.dstack([smooth_image(32, 32), np.full((32, 32), 128, np.uint8)])
    picture = decode(heic(rgba))
    assert picture.alpha is not None and picture.channels == 4


def test_ten_bit_heic_keeps_sixteen_bits() -> None:
    ramp = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    deep = np.dstack([ramp, ramp, ramp])
    data = heic(deep)
    samples = decode_heif_deep(data)
    assert samples.dtype == np.uint16 and samples.max() > 65000  # spread over the whole range, not 10 bits
    assert len(np.unique(samples)) > 256  # more levels than 8 bits hold
    picture = decode(data)
    assert picture.bits == 16 and picture.size == (48, 64)


def test_truncated_heic_and_avif_are_damage_not_foreign() -> None:
    image = smooth_image(40, 60)
    for data in (heic(image), avif(image)):
        for cut in (len(data) // 2, 100):
            with pytest.raises(ImageDecodeError) as caught:
                decode(data[:cut])
            assert "not a recognised image format" not in str(caught.value)


def test_a_huge_claim_is_refused_before_any_decoder() -> None:
    for data in (heic(smooth_image(16, 16)), avif(smooth_image(16, 16))):
        huge = with_claimed_size(data, 100_000, 100_000)
        with pytest.raises(ImageTooLargeError, match="100000x100000"):
            header_size(huge, max_pixels=16_800_000)
        with pytest.raises(ImageTooLargeError):
            decode(huge, max_pixels=16_800_000)


def flat_avif(width: int, height: int) -> bytes:
    """A flat AVIF: a few hundred bytes, however many pixels (a decompression bomb's raw material)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (9, 9, 9)).save(buffer, "AVIF", speed=10, quality=10)
    return buffer.getvalue()


def test_av1_sequence_headers_are_read() -> None:
    assert av1_frame_limits(avif(smooth_image(40, 60))) == [(60, 40)]
    rgba = np.dstack([smooth_image(40, 60), smooth_image(40, 60)[:, :, 0]])
    assert av1_frame_limits(avif(rgba)) == [(60, 40), (60, 40)]  # colour and alpha items
    assert av1_frame_limits(heic(smooth_image(40, 60))) == []  # HEVC: libheif checks its own sizes


def test_an_avif_whose_boxes_understate_its_frame_is_refused() -> None:
    """libavif decodes the AV1 frame whatever `ispe` says (a 548-byte file claiming 16x16 held 1500x1000):
    the sequence header's maximum frame size is held to the limit too."""
    data = with_claimed_size(flat_avif(1500, 1000), 16, 16)
    assert claimed_sizes(data) == [(16, 16)]
    with pytest.raises(ImageTooLargeError, match="1500x1000"):
        decode(data, max_pixels=1_000_000)


@pytest.mark.parametrize("damage", ["iloc-cut", "iloc-count", "obu-size"])
def test_damaged_items_are_walked_safely(damage: str) -> None:
    data = bytearray(avif(smooth_image(16, 16)))
    at = data.find(b"iloc")
    if damage == "iloc-cut":
        data[at + 10 :] = b"\xff" * (len(data) - at - 10)
    elif damage == "iloc-count":
        data[at + 10 : at + 12] = b"\xff\xff"
    else:
        offset, _ = item_extents(bytes(data))[0]
        data[offset + 1 : offset + 9] = b"\xff" * 8  # a size that never ends
    item_extents(bytes(data))
    av1_frame_limits(bytes(data))  # no exception: the decoder reports the damage, if it matters
    # A picture or the documented errors, whatever libavif makes of it; never anything else.
    with contextlib.suppress(ImageDecodeError, ImageTooLargeError):
        assert decode(bytes(data), max_pixels=1_000_000).size == (16, 16)
