"""Training data: LR/HR pairs made with imresize, cached; random aligned patches; augmentation."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from model.data import PatchSampler, as_rgb, augment, list_images, load_hr, load_pairs, load_real_pairs
from model.resize import imresize


@pytest.fixture()
def folder(tmp_path, make_image):
    images = tmp_path / "hr"
    images.mkdir()
    Image.fromarray(make_image(50, 41, seed=1)).save(images / "a.png")
    Image.fromarray(make_image(30, 30, seed=2)[:, :, 0]).save(images / "b.png")  # grayscale
    (images / "notes.txt").write_text("not an image")
    return images


def test_list_images_skips_other_files(folder, tmp_path):
    assert [p.name for p in list_images(folder)] == ["a.png", "b.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path / "empty")


def test_load_pairs_modcrop_and_bicubic(folder, tmp_path):
    pairs = load_pairs(folder, 3, cache_dir=tmp_path / "cache")
    (lr_a, hr_a), (lr_b, hr_b) = pairs
    assert hr_a.shape == (3, 48, 39) and lr_a.shape == (3, 16, 13)
    assert hr_b.shape == (3, 30, 30) and lr_b.shape == (3, 10, 10)
    assert torch.equal(lr_a, imresize(hr_a, scale=1 / 3))
    assert lr_a.dtype == hr_a.dtype == torch.uint8
    cached = list((tmp_path / "cache").glob("pairs_x3_*.pt"))
    assert len(cached) == 1
    again = load_pairs(folder, 3, cache_dir=tmp_path / "cache")
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(pairs, again, strict=True))


def test_load_real_pairs_size_mismatch(tmp_path, make_image):
    for sub in ("HR", "LR_same_size"):
        (tmp_path / sub).mkdir()
    Image.fromarray(make_image(20, 20)).save(tmp_path / "HR" / "x.png")
    Image.fromarray(make_image(20, 20, seed=1)).save(tmp_path / "LR_same_size" / "x.png")
    assert load_real_pairs(tmp_path)[0][0].shape == (3, 20, 20)
    Image.fromarray(make_image(20, 24)).save(tmp_path / "LR_same_size" / "x.png")
    with pytest.raises(ValueError, match="differ in size"):
        load_real_pairs(tmp_path)


def test_as_rgb():
    gray = torch.zeros(1, 4, 5, dtype=torch.uint8)
    assert as_rgb(gray).shape == (3, 4, 5)
    rgb = torch.zeros(3, 4, 5)
    assert as_rgb(rgb) is rgb


def test_augment_same_transform_for_both():
    lr = torch.arange(2 * 3 * 4.0).view(2, 3, 4)
    for seed in range(8):
        a, b = augment(lr, lr.clone(), random.Random(seed))
        assert torch.equal(a, b)


def test_patch_sampler_fixed_scale_aligned(folder):
    pairs = load_pairs(folder, 2, None)
    sampler = PatchSampler(pairs, None, scale=2, hr_patch=24, seed=3)
    lr, hr = sampler.sample(5)
    assert lr.shape == (5, 3, 12, 12) and hr.shape == (5, 3, 24, 24)
    assert lr.dtype == torch.float32 and float(lr.min()) >= 0 and float(hr.max()) <= 1
    # each LR patch is the bicubic shrink of its HR patch, up to the border of the patch
    for i in range(5):
        shrunk = imresize((hr[i] * 255).round().to(torch.uint8), scale=0.5).float() / 255
        assert (shrunk - lr[i])[:, 2:-2, 2:-2].abs().max() < 0.05


def test_patch_sampler_deterministic_and_resumable(folder):
    pairs = load_pairs(folder, 2, None)
    a, b = PatchSampler(pairs, None, 2, 24, seed=4), PatchSampler(pairs, None, 2, 24, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.sample(3), b.sample(3), strict=True))
    state = a.state()
    first = a.sample(2)
    a.set_state(state)
    assert all(torch.equal(x, y) for x, y in zip(first, a.sample(2), strict=True))


def test_patch_sampler_any_scale_same_size(folder):
    sampler = PatchSampler(None, load_hr(folder), scale=1, hr_patch=28, seed=5)
    lr, hr = sampler.sample(4)
    assert lr.shape == hr.shape == (4, 3, 28, 28)
    assert not torch.equal(lr, hr)


def test_patch_sampler_skips_small_images(folder):
    pairs = load_pairs(folder, 2, None)
    sampler = PatchSampler(pairs, None, 2, hr_patch=40, seed=0)  # only a.png (48x40) is big enough
    assert len(sampler.pairs) == 1
    with pytest.raises(ValueError, match="smaller --patch"):
        PatchSampler(pairs, None, 2, hr_patch=64, seed=0)
    with pytest.raises(ValueError, match="not divisible"):
        PatchSampler(pairs, None, 3, hr_patch=40, seed=0)


def _pair_folder(root, make_image, names=("a", "b", "c"), size=(40, 44)):
    for sub in ("HR", "LR_same_size"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(make_image(*size, seed=i)).save(root / "HR" / f"{name}.png")
        Image.fromarray(make_image(*size, seed=i, noise=12.0)).save(root / "LR_same_size" / f"{name}.png")
    return root


def test_load_real_pairs_exclude_and_only(tmp_path, make_image):
    from model.data import real_pair_names

    folder = _pair_folder(tmp_path, make_image)
    assert real_pair_names(folder) == ["a", "b", "c"]
    everything = load_real_pairs(folder)
    kept = load_real_pairs(folder, exclude=["b"])
    assert len(kept) == 2 and torch.equal(kept[1][1], everything[2][1])
    (only,) = load_real_pairs(folder, only=["b"])
    assert torch.equal(only[0], everything[1][0])
    with pytest.raises(ValueError, match="no pair named"):
        load_real_pairs(folder, exclude=["typo"])


def test_patch_sampler_pair_share(tmp_path, make_image):
    """pair_share 1: every patch from the real pairs (aligned crops); 0: every patch synthetic."""
    pairs = load_real_pairs(_pair_folder(tmp_path / "pairs", make_image))
    hr_images = [torch.full((3, 40, 40), 7, dtype=torch.uint8)]  # flat: recognisable among the pairs' patches
    only_pairs = PatchSampler(pairs, hr_images, scale=1, hr_patch=16, seed=0, pair_share=1.0)
    _, hr = only_pairs.sample(8)
    assert all(not torch.all(h == 7 / 255) for h in hr)
    only_synthetic = PatchSampler(pairs, hr_images, scale=1, hr_patch=16, seed=0, pair_share=0.0)
    _, hr = only_synthetic.sample(8)
    assert torch.allclose(hr, torch.full_like(hr, 7 / 255))
    with pytest.raises(ValueError, match="pair share"):
        PatchSampler(pairs, None, scale=1, hr_patch=16, seed=0, pair_share=1.5)


def test_patch_sampler_real_pairs_crops_are_aligned(tmp_path, make_image):
    """LR = HR + 1 everywhere, so every LR crop is its HR crop + 1 through flips and rotations."""
    for sub in ("HR", "LR_same_size"):
        (tmp_path / sub).mkdir()
    hr = make_image(40, 48, seed=3) // 2
    Image.fromarray(hr).save(tmp_path / "HR" / "p.png")
    Image.fromarray(hr + 1).save(tmp_path / "LR_same_size" / "p.png")
    sampler = PatchSampler(load_real_pairs(tmp_path), None, scale=1, hr_patch=24, seed=1, pair_share=1.0)
    lr, hr_patches = sampler.sample(6)
    assert torch.allclose(lr - hr_patches, torch.full_like(lr, 1 / 255), atol=1e-6)
