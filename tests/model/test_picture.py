"""Pictures: arrays and PIL images of every colour mode to Picture and back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.picture import (
    ImageDecodeError,
    Picture,
    UnsupportedImageError,
    array_to_pil,
    picture_from_array,
    picture_from_pil,
    to_array,
)
from tests.model.png_support import SRGB_ICC, pattern


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_picture_from_array_round_trip(channels, mode, dtype):
    array = pattern(5, 7, channels, dtype)
    picture = picture_from_array(array)
    assert picture.channels == channels
    assert picture.bits == (16 if dtype == np.uint16 else 8)
    assert picture.mode == (mode if dtype == np.uint8 else ("I;16" if channels == 1 else mode + ";16"))
    assert picture.color.shape == (3, 5, 7)
    assert (picture.alpha is not None) == (channels in (2, 4))
    back = to_array(picture.color, picture.alpha, picture.gray, picture.bits)
    assert back.dtype == dtype and np.array_equal(back, array)


def test_picture_from_array_2d_and_float():
    gray = pattern(4, 5, 1)[:, :, 0]
    assert picture_from_array(gray).mode == "L"
    floats = np.full((3, 3, 3), 0.5, np.float32)
    floats[0, 0] = 1.5  # clamped
    picture = picture_from_array(floats)
    assert picture.bits == 8 and float(picture.color.max()) == 1.0
    assert torch.allclose(picture.color[:, 1, 1], torch.full((3,), 0.5))


@pytest.mark.parametrize(("array", "error"), [
    (np.zeros((4, 4, 5), np.uint8), UnsupportedImageError),
    (np.zeros((4, 4, 3), np.int32), UnsupportedImageError),
    (np.zeros((4,), np.uint8), UnsupportedImageError),
    (np.zeros((0, 4, 3), np.uint8), ImageDecodeError),
])
def test_picture_from_array_rejects(array, error):
    with pytest.raises(error):
        picture_from_array(array)


def test_picture_from_pil_modes():
    rgb = Image.fromarray(pattern(4, 4, 3))
    assert picture_from_pil(rgb.convert("1")).mode == "L"
    assert picture_from_pil(rgb.convert("YCbCr")).mode == "RGB"
    assert picture_from_pil(rgb.convert("RGBa")).mode == "RGBA"
    assert picture_from_pil(Image.new("F", (3, 2), 0.25)).mode == "L"
    assert picture_from_pil(Image.new("I", (3, 2), 1000)).bits == 16


def test_picture_from_pil_32bit_integer_rejected():
    with pytest.raises(UnsupportedImageError, match="32-bit"):
        picture_from_pil(Image.new("I", (3, 2), 70000))


def test_to_array_gray_is_channel_mean_and_clamps():
    color = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    assert np.all(to_array(color, None, True, 8) == 128)
    assert np.all(to_array(color * 3 - 1, None, False, 8)[0, 0] == [0, 128, 255])
    assert to_array(color, torch.ones(2, 2), False, 16)[0, 0].tolist() == [0, 32768, 65535, 65535]


# --- whole-image encoders --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_array_to_pil_8bit(mode):
    array = pattern(4, 6, len(mode))
    img = array_to_pil(array, SRGB_ICC)
    assert img.mode == mode and img.size == (6, 4)
    assert np.array_equal(np.asarray(img).reshape(array.shape), array)
    assert img.info["icc_profile"] == SRGB_ICC


def test_array_to_pil_16bit_colour_reduced_to_8bit():
    array = np.array([[[0, 257, 65535], [32896, 65535, 0]]], np.uint16)
    img = array_to_pil(array)
    assert img.mode == "RGB"
    assert np.asarray(img).tolist() == [[[0, 1, 255], [128, 255, 0]]]


def test_array_to_pil_16bit_gray():
    array = pattern(4, 6, 1, np.uint16)
    img = array_to_pil(array)
    assert img.mode == "I;16"
    assert np.array_equal(np.asarray(img).astype(np.int64), array[:, :, 0].astype(np.int64))


def test_picture_properties():
    picture = Picture(torch.zeros(3, 2, 5), torch.zeros(2, 5), gray=False, bits=16)
    assert picture.size == (2, 5) and picture.channels == 4 and picture.mode == "RGBA;16"
