"""Training data: HR images held in memory as uint8, LR made once with MATLAB bicubic.

Two kinds of pairs:
- fixed scale s: LR = imresize(HR, 1/s), computed once per image and cached on disk,
  so an epoch never re-decodes a PNG or re-runs the resize;
- any scale (IMDN_AS): same-size pairs made per patch by shrinking the HR patch
  by a random scale and bringing it back with bicubic, exactly the degradation
  the engine's bicubic pre-scaling produces; or, with a ``DegradationConfig``,
  by the synthetic camera model of ``model.degrade`` (blur, downscaling, noise,
  JPEG, then the same bicubic back); or real same-size LR/HR pairs.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable
from pathlib import Path

import torch

from model.degrade import Degradation, degrade
from model.evaluate import read_uint8
from model.imageio import IMAGE_SUFFIXES
from model.resize import imresize

log = logging.getLogger(__name__)


def list_images(folder: Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{folder}: no images found")
    return paths


def as_rgb(image: torch.Tensor) -> torch.Tensor:
    """(1|3,H,W) -> (3,H,W)."""
    return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def load_pairs(folder: Path, scale: int, cache_dir: Path | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Folder of HR images -> [(lr, hr)] uint8 (3,h,w) / (3,s*h,s*w), cached as one .pt file."""
    paths = list_images(folder)
    key = hashlib.sha256("\n".join(f"{p.name}:{p.stat().st_size}" for p in paths).encode()).hexdigest()[:12]
    cache = cache_dir / f"pairs_x{scale}_{key}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        return torch.load(cache, weights_only=True)
    pairs = []
    for path in paths:
        hr = as_rgb(read_uint8(path))
        h, w = hr.shape[1] // scale * scale, hr.shape[2] // scale * scale
        hr = hr[:, :h, :w].contiguous()
        pairs.append((imresize(hr, scale=1 / scale), hr))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pairs, cache)
    return pairs


def load_hr(folder: Path) -> list[torch.Tensor]:
    return [as_rgb(read_uint8(p)) for p in list_images(folder)]


def real_pair_names(folder: Path) -> list[str]:
    """The pairs of a HR/ + LR_same_size/ folder, by file stem, sorted."""
    return [p.stem for p in list_images(Path(folder) / "HR")]


def load_real_pairs(folder: Path, exclude: Iterable[str] = (),
                    only: Iterable[str] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Folder with HR/ and LR_same_size/ (RealSR layout) -> [(lr, hr)] of equal size, sorted by name.

    `exclude` leaves pairs out by stem (a leave-one-out fold's held-out pair); `only` keeps just those.
    Naming a pair that is not there is an error, so a typo never silently trains on everything.
    """
    hr_paths = list_images(folder / "HR")
    stems = {p.stem for p in hr_paths}
    exclude = set(exclude)
    keep = None if only is None else set(only)
    unknown = (exclude | (keep or set())) - stems
    if unknown:
        raise ValueError(f"{folder}: no pair named {sorted(unknown)} (pairs: {sorted(stems)})")
    pairs = []
    for hr_path in hr_paths:
        if hr_path.stem in exclude or (keep is not None and hr_path.stem not in keep):
            continue
        lr = as_rgb(read_uint8(folder / "LR_same_size" / hr_path.name))
        hr = as_rgb(read_uint8(hr_path))
        if lr.shape != hr.shape:
            raise ValueError(f"{hr_path.name}: LR {tuple(lr.shape)} and HR {tuple(hr.shape)} differ in size")
        pairs.append((lr, hr))
    return pairs


def augment(lr: torch.Tensor, hr: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's augmentation: random horizontal flip and 90-degree rotation, same for both."""
    if rng.random() < 0.5:
        lr, hr = lr.flip(-1), hr.flip(-1)
    k = rng.randrange(4)
    return lr.rot90(k, (-2, -1)), hr.rot90(k, (-2, -1))


class PatchSampler:
    """Random aligned (LR, HR) patch batches as float tensors in [0,1].

    Fixed scale: LR patch = hr_patch / scale. Any-scale: same-size pairs; from HR
    images a random scale in [min_scale, max_scale] is drawn per patch, or, with
    `degradation`, a synthetic degradation of ``model.degrade`` (the camera model
    or one fitted to real pairs). With both real pairs and HR images, each patch
    comes from the pairs with probability `pair_share` (1 - the ``--mix`` share).
    Images smaller than the HR patch are skipped (with a count in the log).
    """

    def __init__(
        self,
        pairs: list[tuple[torch.Tensor, torch.Tensor]] | None,
        hr_images: list[torch.Tensor] | None,
        scale: int,
        hr_patch: int,
        seed: int,
        scale_range: tuple[float, float] = (1.1, 4.0),
        degradation: Degradation | None = None,
        pair_share: float = 0.5,
    ) -> None:
        if hr_patch % max(scale, 1) != 0:
            raise ValueError(f"HR patch {hr_patch} is not divisible by the scale {scale}")
        self.scale, self.hr_patch, self.scale_range = scale, hr_patch, scale_range
        self.degradation = degradation
        if not 0 <= pair_share <= 1:
            raise ValueError(f"pair share {pair_share} is not in [0, 1]")
        self.pair_share = pair_share
        self.rng = random.Random(seed)

        def big_enough(hr: torch.Tensor) -> bool:
            return min(hr.shape[-2:]) >= hr_patch

        self.pairs = [p for p in (pairs or []) if big_enough(p[1])]
        self.hr_images = [h for h in (hr_images or []) if big_enough(h)]
        skipped = len(pairs or []) + len(hr_images or []) - len(self.pairs) - len(self.hr_images)
        if skipped:
            log.info("skipping %d images smaller than the %dpx HR patch", skipped, hr_patch)
        if not self.pairs and not self.hr_images:
            raise ValueError(f"no training image is at least {hr_patch}x{hr_patch}; use a smaller --patch")

    def _fixed_scale_patch(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, lp = self.scale, self.hr_patch // self.scale
        y = self.rng.randrange(lr.shape[1] - lp + 1)
        x = self.rng.randrange(lr.shape[2] - lp + 1)
        return lr[:, y : y + lp, x : x + lp], hr[:, y * s : (y + lp) * s, x * s : (x + lp) * s]

    def _any_scale_patch(self, hr_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.hr_patch
        y = self.rng.randrange(hr_image.shape[1] - p + 1)
        x = self.rng.randrange(hr_image.shape[2] - p + 1)
        hr = hr_image[:, y : y + p, x : x + p]
        if self.degradation is not None:
            return degrade(hr, self.degradation, self.rng), hr.float() / 255
        s = self.rng.uniform(*self.scale_range)
        small = max(1, round(p / s))
        lr_small = imresize(hr, size=(small, small))  # uint8, as a stored LR image would be
        return imresize(lr_small.float() / 255, size=(p, p)).clamp(0, 1), hr.float() / 255

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        lrs, hrs = [], []
        for _ in range(batch):
            use_pairs = bool(self.pairs) and (not self.hr_images or self.rng.random() < self.pair_share)
            if use_pairs:
                lr, hr = self.pairs[self.rng.randrange(len(self.pairs))]
                if self.scale == 1:  # real same-size pair
                    lr, hr = self._aligned_same_size(lr, hr)
                else:
                    lr, hr = self._fixed_scale_patch(lr, hr)
                lr, hr = lr.float() / 255, hr.float() / 255
            else:
                lr, hr = self._any_scale_patch(self.hr_images[self.rng.randrange(len(self.hr_images))])
            lr, hr = augment(lr, hr, self.rng)
            lrs.append(lr)
            hrs.append(hr)
        return torch.stack(lrs), torch.stack(hrs)

    def _aligned_same_size(self, lr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.hr_patch
        y = self.rng.randrange(hr.shape[1] - p + 1)
        x = self.rng.randrange(hr.shape[2] - p + 1)
        return lr[:, y : y + p, x : x + p], hr[:, y : y + p, x : x + p]

    def state(self) -> object:
        return self.rng.getstate()

    def set_state(self, state: object) -> None:
        self.rng.setstate(state)  # type: ignore[arg-type]
