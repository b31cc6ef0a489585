"""IMDN and IMDN_AS (Hui et al., ACM MM 2019), tensors only.

Attribute names follow the authors' code (``fea_conv``, ``IMDB1``..``IMDB6``,
``c``, ``LR_conv``, ``upsampler``) so that their published state dicts load
with ``strict=True``; that is the parity check for this file.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

NUM_FEATURES = 64
NUM_BLOCKS = 6
LRELU_SLOPE = 0.05


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """Zero-padded 'same' convolution (halves the size when stride is 2)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)


def pixel_shuffle_upsampler(in_channels: int, out_channels: int, scale: int) -> nn.Sequential:
    """3x3 conv to out_channels * scale^2, then sub-pixel shuffle (Fig. 1)."""
    return nn.Sequential(conv(in_channels, out_channels * scale**2, 3), nn.PixelShuffle(scale))


def channel_std(x: torch.Tensor) -> torch.Tensor:
    """x: (N,C,H,W) -> (N,C,1,1) population standard deviation over H x W (eq. 5)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()


def _conv_channels(layer: nn.Conv2d, x: torch.Tensor, channels: slice) -> torch.Tensor:
    """Only the output channels `channels` of a 'same' convolution `layer` over x."""
    assert layer.bias is not None
    return F.conv2d(x, layer.weight[channels], layer.bias[channels], layer.stride, layer.padding)


class ContrastChannelAttention(nn.Module):
    """Contrast-aware channel attention (CCA): std + mean drive a squeeze-excite gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, contrast: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N,C,H,W) -> (N,C,H,W); contrast (N,C,1,1), if given, replaces x's own std + mean.

        Tiled inference passes the whole image's statistics here, so every tile
        is gated as the whole image would be.
        """
        if contrast is None:
            contrast = channel_std(x) + x.mean(dim=(2, 3), keepdim=True)
        return x * self.conv_du(contrast)


class IMDB(nn.Module):
    """Information multi-distillation block: progressive refinement, CCA, 1x1 fusion, residual."""

    def __init__(self, channels: int = NUM_FEATURES, distillation_rate: float = 0.25) -> None:
        super().__init__()
        self.distilled = int(channels * distillation_rate)
        self.remaining = channels - self.distilled
        self.c1 = conv(channels, channels, 3)
        self.c2 = conv(self.remaining, channels, 3)
        self.c3 = conv(self.remaining, channels, 3)
        self.c4 = conv(self.remaining, self.distilled, 3)
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=True)
        self.c5 = conv(self.distilled * 4, channels, 1)
        self.cca = ContrastChannelAttention(self.distilled * 4)

    def distill(self, x: torch.Tensor) -> torch.Tensor:
        """Progressive refinement: x (N,64,H,W) -> the four kept 16-channel parts, (N,64,H,W).

        c1..c3 each run as two convolutions, one for the kept channels and one for the rest, instead
        of one convolution and a split: the same arithmetic, but ONNX Runtime then keeps its blocked
        channel layout from conv to conv where each split made it reorder the whole map twice
        (an x3 tile of 437 px: 0.434 vs 0.469 µs per output pixel; eager PyTorch unchanged).
        """
        kept, rest = [], x
        for layer in (self.c1, self.c2, self.c3):
            kept.append(self.act(_conv_channels(layer, rest, slice(0, self.distilled))))
            rest = self.act(_conv_channels(layer, rest, slice(self.distilled, None)))
        return torch.cat([*kept, self.c4(rest)], dim=1)

    def forward(self, x: torch.Tensor, contrast: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N,64,H,W) -> (N,64,H,W); contrast: optional (N,64,1,1) CCA statistics."""
        return self.c5(self.cca(self.distill(x), contrast)) + x


class _IMDNBody(nn.Module):
    """The shared trunk: 6 IMDBs, intermediate information collection and global residual."""

    fea_conv: nn.Module
    upsampler: nn.Sequential

    def __init__(self, num_blocks: int = NUM_BLOCKS, nf: int = NUM_FEATURES) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        for i in range(1, num_blocks + 1):
            self.add_module(f"IMDB{i}", IMDB(nf))
        self.c = nn.Sequential(conv(nf * num_blocks, nf, 1), nn.LeakyReLU(LRELU_SLOPE, inplace=True))
        self.LR_conv = conv(nf, nf, 3)

    def blocks(self) -> list[IMDB]:
        return [getattr(self, f"IMDB{i}") for i in range(1, self.num_blocks + 1)]

    def forward(self, x: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N,3,H,W) float in [0,1] -> (N,3,s*H',s*W') (see subclasses for H', s).

        cca_contrast: optional (N, num_blocks, 64) CCA statistics to use instead
        of the input's own (see ``cca_moments``).
        """
        features = self.fea_conv(x)
        # The 1x1 collection conv over the 6 concatenated block outputs is summed
        # block by block: same result, without holding 6 feature maps at once.
        fuse: nn.Conv2d = self.c[0]  # type: ignore[assignment]
        weights = fuse.weight.split(features.shape[1], dim=1)
        collected = None
        out = features
        for i, block in enumerate(self.blocks()):
            contrast = None if cca_contrast is None else cca_contrast[:, i, :, None, None].to(out.dtype)
            out = block(out, contrast)
            part = F.conv2d(out, weights[i])
            collected = part if collected is None else collected + part
        assert collected is not None
        assert fuse.bias is not None
        fused = self.c[1](collected + fuse.bias.view(1, -1, 1, 1))
        return self.upsampler(self.LR_conv(fused) + features)

    @torch.no_grad()
    def cca_moments(self, windows: torch.Tensor, mask: torch.Tensor,
                    cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        """Per-block first and second moments of the CCA inputs over masked pixels of windows of one image.

        windows: (N,3,h,w) crops of one image; mask: (N,1,h',w') bool at feature
        resolution, True where a window's features equal the whole image's (away
        from the crop edges). With cca_contrast (num_blocks, 64) the blocks are
        gated by it; without, the windows are treated as one image: each block
        is gated by statistics pooled over all masked pixels, so block k sees
        what blocks < k would give on the whole image.
        Returns (num_blocks, 3, 64): masked pixel count, sum, and sum of squares.
        """
        out = self.fea_conv(windows)
        weight = mask.to(out.dtype)
        count = weight.sum()
        if count == 0:
            raise ValueError("the mask selects no pixel")
        moments = []
        for i, block in enumerate(self.blocks()):
            distilled = block.distill(out)
            # float64 sums: millions of pixels, and the variance is a difference of them
            total = (distilled * weight).sum(dim=(0, 2, 3), dtype=torch.float64)
            squares = (distilled.pow(2) * weight).sum(dim=(0, 2, 3), dtype=torch.float64)
            moments.append(torch.stack([count.to(torch.float64).expand_as(total), total, squares]))
            contrast = contrast_from_moments(moments[-1]) if cca_contrast is None else cca_contrast[i]
            out = block.c5(block.cca(distilled, contrast.to(out.dtype).view(1, -1, 1, 1))) + out
        return torch.stack(moments)


def contrast_from_moments(moments: torch.Tensor) -> torch.Tensor:
    """(..., 3, C) count/sum/sum-of-squares -> (..., C) std + mean, as CCA computes it."""
    count, total, squares = moments.unbind(-2)
    mean = total / count
    return (squares / count - mean * mean).clamp_min(0).sqrt() + mean


class IMDN(_IMDNBody):
    """IMDN for a fixed integer scale: x (N,3,H,W) in [0,1] -> (N,3,sH,sW)."""

    def __init__(self, scale: int, num_blocks: int = NUM_BLOCKS, nf: int = NUM_FEATURES) -> None:
        super().__init__(num_blocks, nf)
        self.scale = scale
        self.fea_conv = conv(3, nf, 3)
        self.upsampler = pixel_shuffle_upsampler(nf, 3, scale)


class IMDN_AS(_IMDNBody):  # noqa: N801 - the paper's name
    """IMDN for any scale: pre-upscaled x (N,3,H,W), H and W divisible by 4 -> (N,3,H,W).

    input_skip adds the input to the output, so the network learns only what
    bicubic misses. The paper's network has no such skip and must rebuild every
    pixel from quarter-resolution features; the project's weights use it
    (recorded in their metadata, see ``model.weights``), the authors' do not.
    The skip has no parameters, so both load into the same layout.
    """

    # The input is the bicubic-upscaled image: the output has its size.
    scale = 1

    def __init__(self, num_blocks: int = NUM_BLOCKS, nf: int = NUM_FEATURES, input_skip: bool = True) -> None:
        super().__init__(num_blocks, nf)
        self.input_skip = input_skip
        self.fea_conv = nn.Sequential(
            conv(3, nf, 3, stride=2), nn.LeakyReLU(LRELU_SLOPE, inplace=True), conv(nf, nf, 3, stride=2)
        )
        self.upsampler = pixel_shuffle_upsampler(nf, 3, 4)

    def forward(self, x: torch.Tensor, cca_contrast: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x, cca_contrast)
        return out + x if self.input_skip else out


# Feature maps held between the parts of a whole-image IMDN_AS run (see NetworkPart): half precision
# keeps every output value within 1/255 of the one-pass result (tests/model/test_imdn.py).
PART_STORAGE = torch.float16
# Feature rows (and columns) of context each part needs around those it produces: a block's four 3x3 convs (4),
# LR_conv and the upsampler (2). The head's two stride-2 convs read 3 input pixels past a feature
# row's 4: one feature row (4 input rows) covers them, and the tail recomputes the head (or, as
# tail_held, reads it from a fourth map).
PART_CONTEXT = {"head": 1, "block": 4, "tail": 2, "tail_held": 2}


class NetworkPart(nn.Module):
    """One part of IMDN_AS over a window of feature pixels, so that every block can be gated by the exact
    statistics of the whole image without the whole network's activations in memory at once.

    - ``head``: x (N,3,4h,4w) -> block 0's input (N,64,h,w);
    - ``block`` 0: (its input, own) -> (distilled, sums);
    - ``block`` k > 0: (block k-1's distilled, input and statistics (N,64), collected, own) -> block k-1's
      output (block k's input), collected plus its share of the 1x1 collection conv, and block k's
      (distilled, sums);
    - ``tail``: (block 5's distilled, input and statistics, collected, x) -> the output (N,3,4h,4w),
      recomputing the head for the global residual;
    - ``tail_held``: the same with the head's output held: (..., collected, the head's output, x).

    Distilled features are a block's CCA input; sums (2,64) are their per-channel sum and sum of
    squares over the window's own pixels, rows own[0]:own[1] and columns own[2]:own[3] (int64), which
    the caller adds up over the whole image to gate the block. Feature maps go in and out as
    PART_STORAGE; the arithmetic runs in the network's own dtype. Head, blocks and tail in turn equal
    ``IMDN_AS.forward``. The parts run over windows of feature rows and columns (context all around).
    """

    def __init__(self, net: IMDN_AS, kind: str, block: int = 0) -> None:
        super().__init__()
        if kind not in PART_CONTEXT or not 0 <= block < net.num_blocks:
            raise ValueError(f"no part {kind!r} {block}; parts are {', '.join(PART_CONTEXT)}")
        self.net, self.kind, self.block = net, kind, block

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.net
        dtype = net.LR_conv.weight.dtype
        if self.kind == "head":
            return (net.fea_conv(inputs[0].to(dtype)).to(PART_STORAGE),)
        fuse: nn.Conv2d = net.c[0]  # type: ignore[assignment]
        blocks = net.blocks()
        if self.kind == "block" and self.block == 0:
            return self._distill(blocks[0], inputs[0].to(dtype), inputs[1])
        # Finish the block before: gate its distilled features, fuse, add its input, collect.
        finished = self.block - 1 if self.kind == "block" else net.num_blocks - 1
        distilled, block_input, contrast, collected = (t.to(dtype) for t in inputs[:4])
        out = blocks[finished].c5(blocks[finished].cca(distilled, contrast[:, :, None, None])) + block_input
        collected = collected + F.conv2d(out, fuse.weight.split(out.shape[1], dim=1)[finished])
        if self.kind == "block":
            distilled, sums = self._distill(blocks[self.block], out, inputs[4])
            return out.to(PART_STORAGE), collected.to(PART_STORAGE), distilled, sums
        x = inputs[-1].to(dtype)
        head = inputs[4].to(dtype) if self.kind == "tail_held" else net.fea_conv(x)
        assert fuse.bias is not None
        fused = net.c[1](collected + fuse.bias.view(1, -1, 1, 1))
        result = net.upsampler(net.LR_conv(fused) + head)
        return (result + x if net.input_skip else result,)

    @staticmethod
    def _distill(block: IMDB, x: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distilled = block.distill(x)
        own = distilled[:, :, window[0] : window[1], window[2] : window[3]].float()
        return distilled.to(PART_STORAGE), torch.stack([own.sum(dim=(0, 2, 3)), own.pow(2).sum(dim=(0, 2, 3))])


def imdn_x2() -> IMDN:
    return IMDN(scale=2)


def imdn_x3() -> IMDN:
    return IMDN(scale=3)


def imdn_x4() -> IMDN:
    return IMDN(scale=4)


def imdn_as() -> IMDN_AS:
    return IMDN_AS()


# The four variants the project ships, by the names the API and weights use.
MODEL_NAMES = ("x2", "x3", "x4", "as")


def build_model(name: str) -> IMDN | IMDN_AS:
    """'x2' | 'x3' | 'x4' | 'as' -> an untrained network."""
    constructors: dict[str, Callable[[], IMDN | IMDN_AS]] = {"x2": imdn_x2, "x3": imdn_x3, "x4": imdn_x4, "as": imdn_as}
    if name not in constructors:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return constructors[name]()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
