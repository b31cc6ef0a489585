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

``FittedDegradation`` is the other kind: measured, not drawn from textbook
ranges (model/camera_fit.py estimates it from real same-size pairs); ``degrade``
then applies one of its kernels, a little wider or narrower, and noise like the
measured one.
"""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.resize import imresize

KERNEL_KINDS = ("iso", "aniso", "generalized", "plateau")
RESIZE_MODES = ("area", "bilinear", "bicubic")
# --degradation choices of model.train: clean round trips, the drawn camera model, the fitted one.
DEGRADATIONS = ("bicubic", "camera", "camera-fitted")
# The fit to the project's four RealSR pairs (python -m model.camera_fit ../shared/data/realsr-sample).
DEFAULT_FITTED = Path(__file__).resolve().parent / "weights" / "camera_fitted.json"


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


def degrade(hr: torch.Tensor, config: Degradation, rng: random.Random) -> torch.Tensor:
    """hr: (3,H,W) uint8 or float in [0,1] -> the degraded image at the same size, float in [0,1].

    The LR is stored as 8-bit, as a photo file would be, then brought back to HR
    size with the project's MATLAB bicubic: exactly what IMDN_AS gets from the engine.
    A ``FittedDegradation`` works at the same size throughout (see ``degrade_fitted``).
    """
    if isinstance(config, FittedDegradation):
        return degrade_fitted(hr, config, rng)
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


# ---------------------------------------------------------------------------------------------------------
# A degradation fitted to real same-size pairs


@dataclass(frozen=True)
class FittedDegradation:
    """Blur kernels and noise measured on real pairs, one of each per pair; ``degrade`` draws among them.

    Each kernel maps the HR image to the registered LR image at the same size (sums to 1).
    A draw picks one pair's kernel, stretches its width by a factor in `kernel_scale`,
    blurs, adds noise of that pair's level times a factor in `noise_scale` (drawn at
    1/grain of the resolution and brought back with bicubic, so it is as coarse as the
    measured noise; `noise_gray` of its variance shared by the three channels), and
    stores 8 bits. `clean_prob` keeps a share of plain bicubic round trips (scale 1-4).
    `report` holds what the fit measured but does not draw from (tone, JPEG, fit quality).
    """

    sources: tuple[str, ...]
    kernels: tuple[tuple[tuple[float, ...], ...], ...]
    noise_sigma: tuple[float, ...]  # 8-bit steps
    noise_grain: tuple[float, ...]
    noise_gray: tuple[float, ...]
    kernel_scale: tuple[float, float] = (0.85, 1.2)
    noise_scale: tuple[float, float] = (0.5, 1.5)
    clean_prob: float = 0.0
    report: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        n = len(self.sources)
        if not n or not all(len(v) == n for v in (self.kernels, self.noise_sigma, self.noise_grain, self.noise_gray)):
            raise ValueError("a fitted degradation needs one kernel and noise level per source pair")

    def kernel(self, index: int) -> torch.Tensor:
        return torch.tensor(self.kernels[index], dtype=torch.float32)

    def to_dict(self) -> dict[str, object]:
        return {"kind": "camera-fitted", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FittedDegradation:
        data = {k: v for k, v in data.items() if k != "kind"}

        def tuples(value: object) -> object:
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        return cls(**{k: (v if k == "report" else tuples(v)) for k, v in data.items()})  # type: ignore[arg-type]


Degradation = DegradationConfig | FittedDegradation


def load_degradation(path: Path | None = None) -> FittedDegradation:
    """A fitted degradation's JSON file (default: the bundled fit to the project's real pairs)."""
    path = Path(path) if path is not None else DEFAULT_FITTED
    try:
        return FittedDegradation.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a fitted degradation ({exc})") from exc


def stretch_kernel(kernel: torch.Tensor, factor: float) -> torch.Tensor:
    """(k,k) kernel -> the same shape `factor` times as wide (bilinear resampling, odd size, sums to 1)."""
    if factor == 1:
        return kernel
    r = kernel.shape[-1] // 2
    new_r = max(1, math.ceil(r * factor))
    ax = torch.arange(-new_r, new_r + 1, dtype=torch.float32) / factor / max(r, 1)  # in the old grid's [-1, 1]
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    grid = torch.stack([x, y], -1)[None]
    out = F.grid_sample(kernel[None, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out[0, 0]
    return out / out.sum()


def grainy_noise(shape: tuple[int, int], grain: float, gray: float, gen: torch.Generator) -> torch.Tensor:
    """(3,*shape) noise of unit std, as coarse as white noise at 1/grain resolution brought back with bicubic;
    `gray` of its variance is the same in all three channels."""
    h, w = shape
    small = (max(1, round(h / grain)), max(1, round(w / grain)))
    white = torch.randn((4, *small), generator=gen)
    mixed = math.sqrt(gray) * white[:1] + math.sqrt(1 - gray) * white[1:]
    if small != (h, w):
        mixed = F.interpolate(mixed[None], size=(h, w), mode="bicubic", align_corners=False)[0]
    return mixed / mixed.std().clamp(min=1e-6)


def degrade_fitted(hr: torch.Tensor, config: FittedDegradation, rng: random.Random) -> torch.Tensor:
    """hr (3,H,W) uint8 or float -> same size, float in [0,1]: a measured kernel (stretched), noise, 8 bits."""
    hr_float = hr.float() / 255 if hr.dtype == torch.uint8 else hr.float()
    h, w = hr_float.shape[-2:]
    gen = torch.Generator().manual_seed(rng.getrandbits(63))
    if rng.random() < config.clean_prob:
        total = rng.uniform(1.0, 4.0)
        small = imresize(to_uint8(hr_float), size=(max(1, round(h / total)), max(1, round(w / total))))
        return imresize(small, size=(h, w), float_output=True).div_(255).clamp_(0, 1)
    index = rng.randrange(len(config.sources))
    kernel = stretch_kernel(config.kernel(index), rng.uniform(*config.kernel_scale))
    image = blur(hr_float, kernel)
    sigma = config.noise_sigma[index] * rng.uniform(*config.noise_scale) / 255
    if sigma > 0:
        image = image + sigma * grainy_noise((h, w), config.noise_grain[index], config.noise_gray[index], gen)
    return to_uint8(image).float() / 255
