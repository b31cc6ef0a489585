"""model/memory.py: a request's peak memory from its header (measured against real peaks by
bench/request_memory.py; the admission that uses it is tested on real processes in
tests/reliability/test_admission.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model.imageio import decode, header_layout
from model.memory import ImageLayout, decode_bytes, layout_from_mode, picture_bytes, request_bytes
from model.plan import plan_upscale
from tests.reliability.reliability_support import encode, noise, png16

MB = 2**20
BUDGET = 512 * MB


def estimate(side: int, channels: int, bits: int, scale: float, fmt: str = "png") -> int:
    plan = plan_upscale((side, side), scale)
    return request_bytes(plan, ImageLayout(side, side, channels, bits), 150_000, fmt, BUDGET)


@pytest.mark.parametrize("data,expected", [
    (png16(np.zeros((6, 5, 4), np.uint16)), ImageLayout(6, 5, 4, 16)),
    (png16(np.zeros((6, 5, 3), np.uint16)), ImageLayout(6, 5, 3, 16)),
    (png16(np.zeros((6, 5), np.uint16)), ImageLayout(6, 5, 1, 16)),
    (encode(noise(6, 5, 4)), ImageLayout(6, 5, 4, 8)),
    (encode(noise(6, 5, 1)), ImageLayout(6, 5, 1, 8)),
    (encode(noise(6, 5, 3), "JPEG"), ImageLayout(6, 5, 3, 8)),
], ids=["rgba16", "rgb16", "gray16", "rgba8", "gray8", "jpeg"])
def test_the_header_gives_the_layout_the_decode_makes(data: bytes, expected: ImageLayout) -> None:
    layout = header_layout(data)
    assert layout == expected
    picture = decode(data)
    assert (picture.size, picture.alpha is not None, picture.bits) == ((6, 5), layout.alpha, layout.bits)
    held = picture.color.nbytes + (picture.alpha.nbytes if picture.alpha is not None else 0)
    assert held == picture_bytes(layout)


def test_palette_transparency_counts_as_alpha() -> None:
    assert layout_from_mode(4, 4, "P", transparency=True, sixteen_bit=False).alpha
    assert not layout_from_mode(4, 4, "P", transparency=False, sixteen_bit=False).alpha


def test_the_issues_burst_image_costs_about_a_gigabyte() -> None:
    """4096x4096 16-bit RGBA at 1.01: ~670 MB to decode (measured), a 256 MB picture, IMDN_AS's maps."""
    layout = ImageLayout(4096, 4096, 4, 16)
    assert 600 * MB < decode_bytes(layout) < 900 * MB
    assert picture_bytes(layout) == 256 * MB
    assert 1000 * MB < estimate(4096, 4, 16, 1.01) < 1600 * MB


def test_more_bits_alpha_scale_and_whole_image_formats_cost_more() -> None:
    base = estimate(1024, 3, 8, 2)
    assert estimate(1024, 4, 8, 2) > base
    assert estimate(1024, 3, 16, 2) > base
    assert estimate(1024, 3, 8, 3) > base
    assert estimate(1024, 3, 8, 2, "webp") > base
    assert estimate(64, 3, 8, 2) < 5 * MB  # a thumbnail is no burden on any budget
