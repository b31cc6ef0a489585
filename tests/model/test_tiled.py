"""Tiles: whole-image statistics shared across tiles, batches, out-of-memory retries, tile sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.backends import TorchRunner
from model.engine import Upscaler
from model.imdn import contrast_from_moments
from model.picture import picture_from_array, unit_float
from model.tiled import tile_core
from model.tiling import AS_CONTEXT, IMDN_CONTEXT
from tests.model.engine_support import CLEAN_AS, WHOLE_BUDGET, SpyRunner, gradient


def test_tile_core_multiple_of_4_and_grows_with_budget():
    small = tile_core("x2", 2**20, IMDN_CONTEXT)
    large = tile_core("x2", 2**30, IMDN_CONTEXT)
    assert small == 32  # floor
    assert large % 4 == 0 and large > small
    assert tile_core("as", 2**30, AS_CONTEXT) % 4 == 0


@pytest.mark.parametrize("refine", [True, False])
def test_tiled_x2_matches_whole_image(runner, upscaler, natural, refine):
    tiled = Upscaler(runner, content="clean", any_scale="as", tile_size=32, refine_stats=refine)
    a = tiled.upscale(natural, scale=2).astype(np.int16)
    b = upscaler.upscale(natural, scale=2).astype(np.int16)
    assert a.shape == b.shape == (192, 192, 3)
    close = np.abs(a - b) <= 1
    assert close.mean() >= 0.999, f"only {close.mean():.4%} within 1/255"


def test_tiled_runs_with_whole_image_statistics(runner, natural, random_models):
    """Every tile is gated by the whole image's CCA statistics (not its own)."""
    spy = SpyRunner(runner)
    tiled = Upscaler(spy, **CLEAN_AS, tile_size=32, max_batch=4)
    picture = picture_from_array(natural)
    tiled.upscale_picture(picture, tiled.plan((96, 96), scale=2))
    # 2 x 2 balanced tiles: 48 px cores in 76 px windows (context on the inner side only); a row is one batch.
    assert len(spy.calls) == 2
    whole = contrast_from_moments(
        random_models["x2"].cca_moments(unit_float(picture.color)[None], torch.ones(1, 1, 96, 96, dtype=torch.bool))
    ).float()
    for name, shape, contrast in spy.calls:
        assert name == "x2" and shape == (2, 3, 76, 76)
        assert contrast is not None and contrast.shape == (shape[0], 6, 64)
        torch.testing.assert_close(contrast.float(), whole.expand(shape[0], -1, -1), rtol=1e-4, atol=1e-5)


def test_whole_image_runs_once_without_statistics(runner, natural):
    spy = SpyRunner(runner)
    Upscaler(spy, **CLEAN_AS, budget_bytes=WHOLE_BUDGET).upscale(natural, scale=2)
    assert [(name, shape, contrast) for name, shape, contrast in spy.calls] == [("x2", (1, 3, 96, 96), None)]


def test_acs_runs_four_patches_in_one_batch(runner):
    spy = SpyRunner(runner)
    out = Upscaler(spy, **CLEAN_AS, budget_bytes=WHOLE_BUDGET).upscale(gradient(7, 13, 3), scale=2.5)
    assert out.shape == (18, 33, 3)  # 17.5 -> 18, 32.5 -> 33 (halves round up)
    assert [(name, shape) for name, shape, _ in spy.calls] == [("as", (4, 3, 12, 20))]


class OutOfMemoryRunner(SpyRunner):
    """Fails like the CPU allocator for any batch with more than `max_pixels` input pixels per window."""

    def __init__(self, inner: TorchRunner, max_pixels: int) -> None:
        super().__init__(inner)
        self.max_pixels = max_pixels

    def __call__(self, name, batch, cca_contrast=None):
        if batch.shape[2] * batch.shape[3] > self.max_pixels:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")
        return super().__call__(name, batch, cca_contrast)


def test_out_of_memory_whole_image_retries_in_tiles(runner, upscaler, make_image):
    """The budget says one 128 px tile; the runner cannot take it; the engine redoes it in 64 px cores."""
    image = make_image(128, 128, seed=4)
    oom = OutOfMemoryRunner(runner, max_pixels=128 * 128 - 1)
    out = Upscaler(oom, **CLEAN_AS, budget_bytes=100 * 2**20).upscale(image, scale=2).astype(np.int16)
    window = 64 + IMDN_CONTEXT  # two balanced 64 px cores per axis, each with context on its inner side
    assert [shape for _, shape, _ in oom.calls] == [(2, 3, window, window)] * 2
    assert all(contrast is not None for _, _, contrast in oom.calls)  # tiles share whole-image statistics
    expected = upscaler.upscale(image, scale=2).astype(np.int16)
    assert out.shape == expected.shape == (256, 256, 3)
    assert (np.abs(out - expected) <= 1).mean() >= 0.999


def test_other_runner_errors_are_not_retried(runner, natural):
    class Broken(SpyRunner):
        def __call__(self, name, batch, cca_contrast=None):
            raise RuntimeError("something else broke")

    with pytest.raises(RuntimeError, match="something else broke"):
        Upscaler(Broken(runner)).upscale(natural[:16, :16], scale=2)
