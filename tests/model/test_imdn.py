"""IMDN / IMDN_AS: sizes, parameter counts, and the equivalences tiled inference relies on."""

from __future__ import annotations

import pytest
import torch

from model.imdn import (
    IMDN,
    IMDN_AS,
    MODEL_NAMES,
    PART_STORAGE,
    ContrastChannelAttention,
    NetworkPart,
    build_model,
    channel_std,
    contrast_from_moments,
    count_parameters,
    imdn_as,
    imdn_x2,
    imdn_x3,
    imdn_x4,
)


@pytest.mark.parametrize(
    ("constructor", "expected"),
    [(imdn_x2, 694_404), (imdn_x3, 703_059), (imdn_x4, 715_176), (imdn_as, 752_104)],
)
def test_count_parameters_matches_paper_models(constructor, expected):
    assert count_parameters(constructor()) == expected


def test_build_model_names_and_types():
    assert MODEL_NAMES == ("x2", "x3", "x4", "as")
    for name in ("x2", "x3", "x4"):
        model = build_model(name)
        assert isinstance(model, IMDN)
        assert model.scale == int(name[1])
    assert isinstance(build_model("as"), IMDN_AS)
    assert build_model("as").scale == 1


def test_build_model_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown model 'x5'"):
        build_model("x5")


@pytest.mark.parametrize("name", ["x2", "x3", "x4"])
@pytest.mark.parametrize(("height", "width"), [(1, 1), (7, 13), (97, 61)])
@torch.no_grad()
def test_imdn_forward_odd_sizes(random_models, name, height, width):
    model = random_models[name]
    s = model.scale
    out = model(torch.rand(1, 3, height, width))
    assert out.shape == (1, 3, s * height, s * width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("height", "width"), [(4, 4), (8, 12), (28, 44), (96, 64)])
@torch.no_grad()
def test_imdn_as_forward_sizes_divisible_by_4(random_models, height, width):
    out = random_models["as"](torch.rand(2, 3, height, width))
    assert out.shape == (2, 3, height, width)


@torch.no_grad()
def test_imdn_forward_batch_items_independent(random_models):
    model = random_models["x2"]
    x = torch.rand(3, 3, 12, 9)
    batched = model(x)
    for i in range(3):
        torch.testing.assert_close(batched[i : i + 1], model(x[i : i + 1]), rtol=1e-5, atol=1e-5)


def test_channel_std_is_population_std():
    x = torch.randn(2, 5, 7, 3, dtype=torch.float64)
    expected = x.flatten(2).std(dim=2, unbiased=False)[..., None, None]
    torch.testing.assert_close(channel_std(x), expected)


def test_cca_default_contrast_is_std_plus_mean():
    torch.manual_seed(1)
    cca = ContrastChannelAttention(64).eval()
    x = torch.rand(2, 64, 9, 11)
    explicit = channel_std(x) + x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(cca(x), cca(x, explicit))
    assert not torch.allclose(cca(x), cca(x, explicit + 1.0))


def test_contrast_from_moments_known_values():
    values = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]], dtype=torch.float64).T  # 4 pixels, 2 channels
    moments = torch.stack([torch.full((2,), 4.0, dtype=torch.float64), values.sum(0), values.pow(2).sum(0)])
    expected = values.std(dim=0, unbiased=False) + values.mean(dim=0)
    torch.testing.assert_close(contrast_from_moments(moments), expected)
    batched = contrast_from_moments(torch.stack([moments, moments]))
    assert batched.shape == (2, 2)


@pytest.mark.parametrize(("name", "size", "stride"), [("x2", (19, 23), 1), ("x3", (8, 5), 1), ("as", (32, 44), 4)])
@torch.no_grad()
def test_forward_with_own_pooled_statistics_equals_plain_forward(random_models, name, size, stride):
    model = random_models[name]
    x = torch.rand(1, 3, *size)
    mask = torch.ones(1, 1, size[0] // stride, size[1] // stride, dtype=torch.bool)
    moments = model.cca_moments(x, mask)
    assert moments.shape == (6, 3, 64)
    assert moments.dtype == torch.float64
    assert torch.all(moments[:, 0] == mask.sum())
    contrast = contrast_from_moments(moments).float()
    torch.testing.assert_close(model(x, contrast[None]), model(x), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_cca_moments_given_contrast_reproduces_it(random_models):
    """Gating the blocks with the statistics they produce is a fixed point."""
    model = random_models["x2"]
    x = torch.rand(1, 3, 16, 16)
    mask = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    own = contrast_from_moments(model.cca_moments(x, mask))
    again = contrast_from_moments(model.cca_moments(x, mask, own.float()))
    torch.testing.assert_close(again, own, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_cca_moments_pooled_over_windows_equal_whole_image(random_models):
    """Two crops with >= receptive-field context, masked to their cores, pool to the whole image's statistics."""
    model = random_models["x2"]
    torch.manual_seed(2)
    image = torch.rand(1, 3, 20, 80)
    context = 28
    whole = model.cca_moments(image, torch.ones(1, 1, 20, 80, dtype=torch.bool))
    left = image[..., : 40 + context]
    right = image[..., 40 - context :]
    windows = torch.cat([left, right])
    mask = torch.zeros(2, 1, 20, 40 + context, dtype=torch.bool)
    mask[0, ..., :40] = True
    mask[1, ..., context:] = True
    pooled = model.cca_moments(windows, mask)
    torch.testing.assert_close(contrast_from_moments(pooled), contrast_from_moments(whole), rtol=1e-5, atol=1e-6)


def test_cca_moments_empty_mask_raises(random_models):
    model = random_models["x2"]
    with pytest.raises(ValueError, match="no pixel"):
        model.cca_moments(torch.rand(1, 3, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.bool))


def _forward_with_concatenation(model: IMDN | IMDN_AS, x: torch.Tensor) -> torch.Tensor:
    """The authors' formulation: concatenate the six block outputs, then the 1x1 `c` conv."""
    features = model.fea_conv(x)
    outs, out = [], features
    for block in model.blocks():
        out = block(out)
        outs.append(out)
    fused = model.c(torch.cat(outs, dim=1))
    out = model.upsampler(model.LR_conv(fused) + features)
    return out + x if getattr(model, "input_skip", False) else out


@pytest.mark.parametrize(("name", "size"), [("x2", (13, 17)), ("x4", (6, 5)), ("as", (24, 20))])
@torch.no_grad()
def test_fused_collection_equals_concatenation(random_models, name, size):
    model = random_models[name]
    x = torch.rand(2, 3, *size)
    torch.testing.assert_close(model(x), _forward_with_concatenation(model, x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_distillation_equals_convolution_then_split(random_models):
    """The authors' formulation: each of c1..c3 over all its output channels, then split kept | rest."""
    block = random_models["x2"].blocks()[2]
    x = torch.rand(2, 64, 11, 9)
    split = [block.distilled, block.remaining]
    kept1, rest = torch.split(block.act(block.c1(x)), split, dim=1)
    kept2, rest = torch.split(block.act(block.c2(rest)), split, dim=1)
    kept3, rest = torch.split(block.act(block.c3(rest)), split, dim=1)
    expected = torch.cat([kept1, kept2, kept3, block.c4(rest)], dim=1)
    torch.testing.assert_close(block.distill(x), expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_as_input_skip_adds_the_input(random_models):
    model = random_models["as"]
    x = torch.rand(1, 3, 16, 12)
    assert model.input_skip  # the project's variant
    with_skip = model(x)
    model.input_skip = False  # the paper's
    try:
        torch.testing.assert_close(with_skip, model(x) + x)
    finally:
        model.input_skip = True


def test_forward_is_differentiable():
    torch.manual_seed(3)
    model = imdn_x2()
    out = model(torch.rand(1, 3, 6, 6))
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def _run_in_parts(model, x, tail="tail"):
    """IMDN_AS as NetworkParts over the whole feature map (one band): head, six blocks, tail."""
    out, = NetworkPart(model, "head")(x)
    head = out
    whole = torch.tensor([0, out.shape[2], 0, out.shape[3]])
    distilled, sums = NetworkPart(model, "block", 0)(out, whole)
    collected = torch.zeros_like(out)
    pixels = torch.full((1, 64), float(out.shape[2] * out.shape[3]))

    def contrast(sums: torch.Tensor) -> torch.Tensor:
        return contrast_from_moments(torch.cat([pixels, sums.double()]))[None].float()

    for block in range(1, 6):
        out, collected, distilled, sums = NetworkPart(model, "block", block)(distilled, out, contrast(sums),
                                                                             collected, whole)
    held = (head,) if tail == "tail_held" else ()
    return NetworkPart(model, tail)(distilled, out, contrast(sums), collected, *held, x)[0]


@pytest.mark.parametrize("tail", ["tail", "tail_held"])
@torch.no_grad()
def test_network_parts_in_turn_equal_the_forward_pass(random_models, tail):
    """Head, blocks gated by their own sums, tail (recomputing the head, or reading it): IMDN_AS's output,
    with feature maps held in half precision."""
    x = torch.rand(1, 3, 48, 64)
    model = random_models["as"]
    torch.testing.assert_close(_run_in_parts(model, x, tail), model(x), rtol=0, atol=2e-3)


@torch.no_grad()
def test_network_part_sums_cover_only_the_window_asked_for(random_models):
    block_input = torch.rand(1, 64, 10, 12).half()
    distilled, sums = NetworkPart(random_models["as"], "block", 0)(block_input, torch.tensor([3, 7, 2, 11]))
    own = distilled[:, :, 3:7, 2:11].float()
    # The sums come from the float values, before the feature maps are stored in half precision.
    expected = torch.stack([own.sum(dim=(0, 2, 3)), own.pow(2).sum(dim=(0, 2, 3))])
    torch.testing.assert_close(sums, expected, rtol=2e-3, atol=1e-2)
    assert distilled.dtype == PART_STORAGE and distilled.shape == (1, 64, 10, 12)


def test_network_part_names_are_checked(random_models):
    with pytest.raises(ValueError, match="no part 'neck'"):
        NetworkPart(random_models["as"], "neck")
    with pytest.raises(ValueError, match="no part 'block' 6"):
        NetworkPart(random_models["as"], "block", 6)
