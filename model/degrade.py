"""Synthetic camera degradation: clean HR patches -> the same-size input IMDN_AS sees on real photos.

A real photo enlarged by the service has been through a lens (blur), a sensor at a
lower resolution (downscaling, noise) and usually a JPEG encoder, and then the
engine's own bicubic pre-scaling back to the target size. Training IMDN_AS on
clean bicubic round trips alone teaches it to undo only the last step, so on real
photos it returns almost exactly its input. This module draws those steps at
random, in one or two rounds (the second-order model of Wang et al.,
Real-ESRGAN, 2021), and ends with the project's MATLAB bicubic back to HR size.

Everything is driven by one ``random.Random`` so a run is reproducible: the
parameters are drawn from it and the noise comes from a ``torch.Generator``
seeded from it. Tensors are (3,H,W) float in [0,1].
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.resize import imresize

KERNEL_KINDS = ("iso", "aniso", "generalized", "plateau")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class RoundConfig:
    """The random ranges of one degradation round (blur -> downscale -> noise -> JPEG)."""

    blur_prob: float = 1.0
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_kinds: tuple[str, ...] = KERNEL_KINDS
    # Gaussian width per axis in pixels of the round's *output*: a lens's blur is set by the sensor's
    # pixel pitch, so a photo taken at a quarter of the resolution is four times as blurred at HR size.
    sigma: tuple[float, float] = (0.2, 1.5)
    beta_generalized: tuple[float, float] = (0.5, 4.0)
    beta_plateau: tuple[float, float] = (1.0, 2.0)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    noise_prob: float = 0.3
    gaussian_noise_prob: float = 0.5  # else Poisson
    gray_noise_prob: float = 0.4
    # Milder and rarer than Real-ESRGAN's noise and JPEG (which target perceptual quality):
    # a fidelity model trained mostly on heavy noise and blocking learns to smooth real
    # detail away, while most photos are low-ISO shots whose loss is mainly optical blur
    # and resolution (measured on the real validation pairs: heavier settings left them
    # no better than their input).
    noise_sigma: tuple[float, float] = (1.0, 6.0)  # Gaussian std, 8-bit steps
    poisson_sigma: tuple[float, float] = (1.0, 5.0)  # Poisson std at mid-gray, 8-bit steps
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)


@dataclass(frozen=True)
class DegradationConfig:
    """The whole model: a clean share, the total downscale range, and one or two rounds."""

    clean_prob: float = 0.15  # plain bicubic round trip, so clean input keeps improving too
    scale: tuple[float, float] = (1.0, 4.0)  # total downscale factor of the degraded image
    first: RoundConfig = field(default_factory=RoundConfig)
    second_prob: float = 0.2
    second: RoundConfig = field(default_factory=lambda: RoundConfig(
        blur_prob=0.8, sigma=(0.2, 1.0), noise_prob=0.3, noise_sigma=(1.0, 4.0), poisson_sigma=(1.0, 3.0),
        jpeg_prob=0.3))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Kernel:
    kind: str
    size: int
    sigma_x: float
    sigma_y: float
    theta: float
    beta: float = 1.0


def blur_kernel(spec: Kernel) -> torch.Tensor:
    """spec -> (size,size) float32 kernel summing to 1.

    d^T S^-1 d is the squared Mahalanobis distance of the rotated Gaussian with
    standard deviations sigma_x, sigma_y; generalized kernels raise it to beta
    (flatter tops for beta > 1, heavier tails below), plateau kernels use
    1 / (1 + q^beta), a flat top with slowly decaying tails like a defocus disc.
    """
    if spec.size % 2 == 0 or spec.size < 1:
        raise ValueError(f"kernel size must be odd and positive, got {spec.size}")
    if spec.kind not in KERNEL_KINDS:
        raise ValueError(f"unknown kernel kind {spec.kind!r}")
    r = spec.size // 2
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    cos, sin = math.cos(spec.theta), math.sin(spec.theta)
    u, v = cos * x + sin * y, -sin * x + cos * y
    q = (u / spec.sigma_x) ** 2 + (v / spec.sigma_y) ** 2
    if spec.kind in ("iso", "aniso"):
        k = torch.exp(-0.5 * q)
    elif spec.kind == "generalized":
        k = torch.exp(-0.5 * q**spec.beta)
    else:
        k = 1 / (1 + q**spec.beta)
    return (k / k.sum()).float()


def blur(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """image (C,H,W), kernel (k,k) -> (C,H,W), reflect-padded depthwise convolution."""
    r = kernel.shape[-1] // 2
    c = image.shape[0]
    padded = F.pad(image[None], (r, r, r, r), mode="reflect" if min(image.shape[-2:]) > r else "replicate")
    return F.conv2d(padded, kernel.to(image.dtype).expand(c, 1, -1, -1), groups=c)[0]


def resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """image (C,H,W) -> (C,*size) with torch's area / bilinear / bicubic (antialiased when shrinking)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}")
    if mode == "area":
        return F.interpolate(image[None], size=size, mode="area")[0]
    return F.interpolate(image[None], size=size, mode=mode, align_corners=False, antialias=True)[0]


def add_gaussian_noise(image: torch.Tensor, sigma: float, gray: bool, gen: torch.Generator) -> torch.Tensor:
    """Signal-independent noise of std `sigma` (in [0,1] units); gray = the same noise in every channel."""
    shape = (1, *image.shape[1:]) if gray else image.shape
    return image + torch.randn(shape, generator=gen, dtype=image.dtype) * sigma


def add_poisson_noise(image: torch.Tensor, sigma_at_half: float, gray: bool, gen: torch.Generator) -> torch.Tensor:
    """Shot noise: photon counts with std `sigma_at_half` at mid-gray, growing as sqrt(signal).

    Gray noise is drawn on the luma and added to every channel, as a sensor's
    luminance noise looks.
    """
    peak = 0.5 / sigma_at_half**2  # photons per unit intensity: var = x / peak
    if gray:
        luma = (image * torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype)[:, None, None]).sum(0, keepdim=True)
        luma = luma.clamp(0, 1)
        return image + torch.poisson(luma * peak, generator=gen) / peak - luma
    clean = image.clamp(0, 1)
    return image + torch.poisson(clean * peak, generator=gen) / peak - clean


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return image.clamp(0, 1).mul(255).round().to(torch.uint8)


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """(3,H,W) float -> (3,H,W) uint8 after a Pillow JPEG round trip at `quality` (4:2:0, as cameras save)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        array = np.asarray(decoded.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def random_kernel(rounds: RoundConfig, rng: random.Random, pixel: float = 1.0) -> Kernel:
    """A kernel at the input's resolution whose widths are drawn in output pixels, each `pixel` input pixels
    wide; its size is drawn too, but never cuts a Gaussian off before 2.5 sigma."""
    kind = rng.choice(rounds.kernel_kinds)
    sx = rng.uniform(*rounds.sigma) * pixel
    sy = sx if kind == "iso" else rng.uniform(*rounds.sigma) * pixel
    size = max(rng.choice(rounds.kernel_sizes), 2 * math.ceil(2.5 * max(sx, sy)) + 1)
    theta = 0.0 if kind == "iso" else rng.uniform(0, math.pi)
    beta = 1.0
    if kind == "generalized":
        beta = rng.uniform(*rounds.beta_generalized)
    elif kind == "plateau":
        beta = rng.uniform(*rounds.beta_plateau)
    return Kernel(kind, size, sx, sy, theta, beta)


def degrade_round(image: torch.Tensor, size: tuple[int, int], rounds: RoundConfig, rng: random.Random,
                  gen: torch.Generator) -> torch.Tensor:
    """One round: blur (maybe), resize to `size`, noise (maybe), JPEG (maybe) -> float (3,*size)."""
    if rng.random() < rounds.blur_prob:
        pixel = max(image.shape[-2] / size[0], image.shape[-1] / size[1])
        image = blur(image, blur_kernel(random_kernel(rounds, rng, pixel)))
    image = resize(image, size, rng.choice(rounds.resize_modes))
    if rng.random() < rounds.noise_prob:
        gray = rng.random() < rounds.gray_noise_prob
        if rng.random() < rounds.gaussian_noise_prob:
            image = add_gaussian_noise(image, rng.uniform(*rounds.noise_sigma) / 255, gray, gen)
        else:
            image = add_poisson_noise(image, rng.uniform(*rounds.poisson_sigma) / 255, gray, gen)
    image = image.clamp(0, 1)
    if rng.random() < rounds.jpeg_prob:
        image = jpeg(image, rng.randint(*rounds.jpeg_quality)).float() / 255
    return image


def degrade(hr: torch.Tensor, config: DegradationConfig, rng: random.Random) -> torch.Tensor:
    """hr: (3,H,W) uint8 or float in [0,1] -> the degraded image at the same size, float in [0,1].

    The LR is stored as 8-bit, as a photo file would be, then brought back to HR
    size with the project's MATLAB bicubic: exactly what IMDN_AS gets from the engine.
    """
    hr_float = hr.float() / 255 if hr.dtype == torch.uint8 else hr.float()
    h, w = hr_float.shape[-2:]
    gen = torch.Generator().manual_seed(rng.getrandbits(63))
    total = rng.uniform(*config.scale)
    small = (max(1, round(h / total)), max(1, round(w / total)))
    if rng.random() < config.clean_prob:
        lr = imresize(to_uint8(hr_float), size=small)
    elif rng.random() < config.second_prob:
        # Split the total downscale between the rounds: s1 * s2 = total.
        first = total ** rng.uniform(0.3, 0.7)
        middle = (max(small[0], round(h / first)), max(small[1], round(w / first)))
        lr = degrade_round(hr_float, middle, config.first, rng, gen)
        lr = to_uint8(degrade_round(lr, small, config.second, rng, gen))
    else:
        lr = to_uint8(degrade_round(hr_float, small, config.first, rng, gen))
    return imresize(lr, size=(h, w), float_output=True).div_(255).clamp_(0, 1)
