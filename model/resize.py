"""MATLAB-compatible bicubic ``imresize``, vectorised in torch.

Reproduces MATLAB's ``imresize(img, scale, 'bicubic')``: the cubic kernel with
a = -0.5, an antialiasing kernel stretched by 1/scale when shrinking, symmetric
(mirror) borders, one 1-D pass per axis in the order MATLAB chooses (the
smaller scale first, rows on a tie) and, for uint8/uint16 input, rounding to the
integer type after each pass. SR benchmarks make their LR images this way, so
bit-exactness here is what makes PSNR comparable with published tables. Float results
(float input, or ``float_output``) are not rounded between passes, so their order is
free: columns first, which is faster.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch

KERNEL_WIDTH = 4.0


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=32)
def contributions(
    in_length: int, out_length: int, scale: float, antialias: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output sample, the input indices and float64 weights that make it.

    Returns (weights, indices), both (out_length, P), indices already mirrored
    into [0, in_length). Cached (every band of an image asks again): callers must not modify them.
    """
    width = KERNEL_WIDTH
    stretch = scale if (scale < 1 and antialias) else 1.0
    width = width / stretch
    x = torch.arange(1, out_length + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output sample centre in input coordinates (1-based)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    weights = stretch * cubic(stretch * (u[:, None] - indices))
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Mirror out-of-range indices: ..., 2, 1, [1 .. n], n, n-1, ...
    mirror = torch.cat([torch.arange(in_length), torch.arange(in_length - 1, -1, -1)])
    idx = mirror[torch.remainder(indices.long() - 1, 2 * in_length)]
    used = weights.ne(0).any(dim=0)
    return weights[:, used], idx[:, used]


def resize_axis(
    x: torch.Tensor, dim: int, out_length: int, scale: float, antialias: bool, window: tuple[int, int] | None,
    compute: torch.dtype, in_length: int | None = None, offset: int = 0,
) -> torch.Tensor:
    """Resize x along dim; samples are gathered before conversion to `compute`, so only the read ones are.

    x may hold only part of the axis: input samples offset .. offset + x.shape[dim] of in_length.
    """
    if dim == x.dim() - 1:  # a gather along the last axis is strided: gather whole rows of the transpose
        moved = resize_axis(x.transpose(-1, -2).contiguous(), dim - 1, out_length, scale, antialias, window,
                             compute, in_length, offset)
        return moved.transpose(-1, -2).contiguous()
    x = x.contiguous()  # index_select from a strided view (a band cut from a larger one) is ~5x slower
    weights, idx = contributions(in_length or x.shape[dim], out_length, scale, antialias)
    if window is not None:
        weights, idx = weights[window[0] : window[1]], idx[window[0] : window[1]]
        out_length = window[1] - window[0]
    # One gather per tap, into the same buffer and in x's own dtype: a fresh buffer per tap was a fresh
    # mmap whose pages the kernel faulted in and zeroed every time (measured: 2x slower for the bands of
    # a 7 MP enlargement).
    shape = [1] * x.dim()
    shape[dim] = out_length
    term = torch.empty(0, dtype=x.dtype)
    out = torch.zeros(0)
    for tap in range(idx.shape[1]):
        w = weights[:, tap].to(compute).reshape(shape)
        torch.index_select(x, dim, idx[:, tap] - offset, out=term)
        out = torch.mul(term, w) if tap == 0 else out.addcmul_(term, w)
    return out


def output_size(in_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size for a scale factor: ceil(scale * side)."""
    return (math.ceil(scale * in_hw[0] - 1e-9), math.ceil(scale * in_hw[1] - 1e-9))


def imresize(
    image: torch.Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
    window: tuple[int, int, int, int] | None = None,
    float_output: bool = False,
) -> torch.Tensor:
    """image: (..., H, W) uint8/uint16/float -> (..., H', W') of the same dtype.

    Give ``scale`` (H' = ceil(scale*H)) or ``size`` = (H', W'). With a size, each
    axis uses its own scale out/in, as MATLAB does. Integer input is rounded
    and clamped after each pass; float input is not clamped.
    ``window`` = (y0, y1, x0, x1) computes only that part of the output, equal
    to cropping the full result but reading only the input pixels it needs:
    this is how tiles are pre-scaled without the whole upscaled image in memory.
    ``float_output`` resizes integer input in float32 without rounding (the same
    as converting it first, but only the pixels read are converted).
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    in_h, in_w = image.shape[-2], image.shape[-1]
    if in_h < 1 or in_w < 1:
        raise ValueError(f"cannot resize an empty image of size {in_h}x{in_w}")
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        out_h, out_w = output_size((in_h, in_w), scale)
        scales = (float(scale), float(scale))
    else:
        assert size is not None
        out_h, out_w = size
        if out_h < 1 or out_w < 1:
            raise ValueError(f"output size must be positive, got {out_h}x{out_w}")
        scales = (out_h / in_h, out_w / in_w)

    dtype = image.dtype
    rounded = not dtype.is_floating_point and not float_output
    # MATLAB-exact integer passes work in float64; float_output only needs float32.
    compute = torch.float32 if float_output else torch.float64
    if dtype.is_floating_point:
        compute = dtype
    top = float(torch.iinfo(dtype).max) if rounded else 0.0
    # Rounded passes go in MATLAB's order, which the rounding after each depends on. Without rounding
    # the passes commute (up to float rounding): columns first, over only the rows that the output rows
    # read, then rows, whose gathers copy whole contiguous rows (measured: 0.11 s against 0.18 rows
    # first, for a 1024x3073 window of a 2.5x enlargement).
    matlab_order = (0, 1) if scales[0] <= scales[1] else (1, 0)
    order = matlab_order if rounded else (1, 0)
    work, offset = image, 0
    if window is not None and not rounded:
        _, rows_read = contributions(in_h, out_h, scales[0], antialias)
        offset = int(rows_read[window[0] : window[1]].min())
        work = image[..., offset : int(rows_read[window[0] : window[1]].max()) + 1, :]
    for axis in order:
        dim = image.dim() - 2 + axis
        span = None if window is None else (window[2 * axis], window[2 * axis + 1])
        work = resize_axis(work, dim, (out_h, out_w)[axis], scales[axis], antialias, span, compute,
                           in_length=(in_h, in_w)[axis], offset=offset if axis == 0 else 0)
        if rounded:
            # MATLAB rounds half away from zero; values are non-negative after clamping.
            work = torch.floor(work.clamp(0, top) + 0.5)
    return work if float_output else work.to(dtype)


def resize_unit(samples: torch.Tensor, size: tuple[int, int],
                window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """MATLAB-bicubic resize of Picture samples (uint8 or float) to float32 in [0,1], unclamped."""
    out = imresize(samples, size=size, window=window, float_output=True)
    return out.div_(255) if samples.dtype == torch.uint8 else out


def resize_band_stream(bands: Iterator[tuple[int, torch.Tensor]], in_height: int, out_size: tuple[int, int],
                       rows_per_band: int = 128) -> Iterator[tuple[int, torch.Tensor]]:
    """MATLAB-bicubic resize of an image that arrives as bands, emitted as bands.

    Rows are resized first with the full-axis contributions (so the result equals a
    whole-image resize up to float rounding), keeping only the input rows that later
    output rows still need; columns are then resized band by band.
    """
    out_h, out_w = out_size
    _, idx = contributions(in_height, out_h, out_h / in_height)
    held = torch.zeros(0)
    held_from, received = 0, 0
    pending = iter(bands)
    for top in range(0, out_h, rows_per_band):
        bottom = min(out_h, top + rows_per_band)
        need_to = int(idx[top:bottom].max()) + 1
        while received < need_to:
            _, band = next(pending)
            held = band if held.numel() == 0 else torch.cat([held, band], dim=1)
            received += band.shape[1]
        rows = resize_axis(held, 1, out_h, out_h / in_height, True, (top, bottom), held.dtype, in_height, held_from)
        yield top, imresize(rows, size=(bottom - top, out_w)).clamp_(0, 1)
        if bottom < out_h:  # drop input rows no later output row reads
            keep_from = int(idx[bottom:].min())
            held, held_from = held[:, keep_from - held_from :], keep_from
    for _ in pending:  # let the producing stage finish cleanly
        pass
