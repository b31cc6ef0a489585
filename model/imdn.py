"""IMDN and IMDN_AS (Hui et al., ACM MM 2019), tensors only.

Attribute names follow the authors' code (``fea_conv``, ``IMDB1``..``IMDB6``,
``c``, ``LR_conv``, ``upsampler``) so that their published state dicts load
with ``strict=True``; that is the parity check for this file.
"""

from __future__ import annotations

import torch
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N,C,H,W) -> (N,C,H,W)."""
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N,64,H,W) -> (N,64,H,W)."""
        split = (self.distilled, self.remaining)
        kept1, rest = torch.split(self.act(self.c1(x)), split, dim=1)
        kept2, rest = torch.split(self.act(self.c2(rest)), split, dim=1)
        kept3, rest = torch.split(self.act(self.c3(rest)), split, dim=1)
        kept4 = self.c4(rest)
        distilled = torch.cat([kept1, kept2, kept3, kept4], dim=1)
        return self.c5(self.cca(distilled)) + x


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N,3,H,W) float in [0,1] -> (N,3,s*H',s*W') (see subclasses for H', s)."""
        features = self.fea_conv(x)
        out = features
        block_outputs = []
        for i in range(1, self.num_blocks + 1):
            out = getattr(self, f"IMDB{i}")(out)
            block_outputs.append(out)
        fused = self.c(torch.cat(block_outputs, dim=1))
        return self.upsampler(self.LR_conv(fused) + features)


class IMDN(_IMDNBody):
    """IMDN for a fixed integer scale: x (N,3,H,W) in [0,1] -> (N,3,sH,sW)."""

    def __init__(self, scale: int, num_blocks: int = NUM_BLOCKS, nf: int = NUM_FEATURES) -> None:
        super().__init__(num_blocks, nf)
        self.scale = scale
        self.fea_conv = conv(3, nf, 3)
        self.upsampler = pixel_shuffle_upsampler(nf, 3, scale)


class IMDN_AS(_IMDNBody):  # noqa: N801 - the paper's name
    """IMDN for any scale: pre-upscaled x (N,3,H,W), H and W divisible by 4 -> (N,3,H,W)."""

    # The input is the bicubic-upscaled image: the output has its size.
    scale = 1

    def __init__(self, num_blocks: int = NUM_BLOCKS, nf: int = NUM_FEATURES) -> None:
        super().__init__(num_blocks, nf)
        self.fea_conv = nn.Sequential(
            conv(3, nf, 3, stride=2), nn.LeakyReLU(LRELU_SLOPE, inplace=True), conv(nf, nf, 3, stride=2)
        )
        self.upsampler = pixel_shuffle_upsampler(nf, 3, 4)


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
    constructors = {"x2": imdn_x2, "x3": imdn_x3, "x4": imdn_x4, "as": imdn_as}
    if name not in constructors:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return constructors[name]()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
