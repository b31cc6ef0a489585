"""Planning: the scale policy, target sizes, errors, and the one set of defaults."""

from __future__ import annotations

import math

import pytest

from model.plan import (
    Crop,
    Plan,
    Stage,
    UpscaleError,
    fit_box,
    is_model_choice,
    network_of,
    plan_upscale,
    target_size,
)

# The paper's policy for clean images, which these cases were written for (the defaults are for photos).
PAPER_POLICY = {"content": "clean", "any_scale": "as"}

@pytest.mark.parametrize(
    ("request_", "out_size", "stages"),
    [
        ({"scale": 2}, (40, 100), [("x2", (40, 100))]),
        ({"scale": 3}, (60, 150), [("x3", (60, 150))]),
        ({"scale": 4}, (80, 200), [("x4", (80, 200))]),
        ({"scale": 2.0}, (40, 100), [("x2", (40, 100))]),
        ({"scale": 2.5}, (50, 125), [("as", (50, 125))]),
        ({"scale": 1.5}, (30, 75), [("as", (30, 75))]),
        ({"scale": 6}, (120, 300), [("x4", (80, 200)), ("as", (120, 300))]),
        ({"scale": 8}, (160, 400), [("x4", (80, 200)), ("x2", (160, 400))]),
        ({"scale": 5}, (100, 250), [("x4", (80, 200)), ("as", (100, 250))]),
        ({"scale": 3, "model": "x4"}, (60, 150), [("x4", (80, 200)), (None, (60, 150))]),
        ({"scale": 2.5, "model": "x2"}, (50, 125), [("x2", (40, 100)), (None, (50, 125))]),
        ({"scale": 3, "model": "x3"}, (60, 150), [("x3", (60, 150))]),
        ({"scale": 2, "model": "as"}, (40, 100), [("as", (40, 100))]),
        ({"width": 200}, (80, 200), [("x4", (80, 200))]),
        ({"height": 60}, (60, 150), [("x3", (60, 150))]),
        ({"width": 75}, (30, 75), [("as", (30, 75))]),
        ({"width": 100, "height": 30}, (30, 100), [("as", (30, 100))]),
    ],
)
def test_plan_upscale_policy(request_, out_size, stages):
    plan = plan_upscale((20, 50), **PAPER_POLICY, **request_)
    assert plan.in_size == (20, 50)
    assert plan.out_size == out_size
    assert [(s.model, s.size) for s in plan.stages] == stages
    assert plan.stages[-1].size == out_size
    assert plan.models == [m for m, _ in stages if m]


def test_plan_scale_property():
    plan = plan_upscale((20, 50), scale=2.5, **PAPER_POLICY)
    assert plan.scale == (2.5, 2.5)
    assert Plan((2, 4), (3, 8), (Stage("as", (3, 8)),)).scale == (1.5, 2.0)


@pytest.mark.parametrize(("size", "request_", "expected"), [
    ((20, 50), {"width": 125}, (50, 125)),
    ((20, 50), {"height": 30}, (30, 75)),
    ((33, 17), {"width": 51}, (99, 51)),
    ((33, 17), {"height": 66}, (66, 34)),
    ((7, 13), {"scale": 3}, (21, 39)),
    ((3, 7), {"scale": 2.5}, (8, 18)),
])
def test_target_size_keeps_aspect(size, request_, expected):
    request_ = {"scale": None, "width": None, "height": None} | request_
    assert target_size(size, max_scale=8.0, **request_) == expected


@pytest.mark.parametrize(("request_", "message"), [
    ({"scale": 1}, "only IMDN_AS runs, which is for camera photos"),
    ({"scale": 1, "model": "x2"}, "model x2 enlarges by 2"),
    ({"scale": 0.5}, "at least 1"),
    ({"scale": -2}, "at least 1"),
    ({"scale": 0}, "at least 1"),
    ({"scale": math.nan}, "at least 1"),
    ({"scale": math.inf}, "at least 1"),
    ({"scale": 8.5}, "above the maximum"),
    ({"scale": 2, "width": 100}, "not both"),
    ({"scale": 2, "height": 100}, "not both"),
    ({}, "give a scale or a target"),
    ({"width": 0}, "width must be a positive"),
    ({"height": -5}, "height must be a positive"),
    ({"width": 49}, "smaller than the input"),
    ({"width": 100, "height": 19}, "smaller than the input"),
    ({"width": 50, "height": 20}, "input's own size .50x20.: at that size only IMDN_AS"),
    ({"width": 50}, "input's own size"),
    ({"width": 49, "height": 30, "fit": "contain"}, "fit=contain in a 49x30 box would shrink"),
    ({"width": 40, "height": 19, "fit": "cover"}, "fit=cover in a 40x19 box would shrink"),
    ({"width": 500}, "more than 8.0x"),
    ({"width": 100, "height": 170}, "more than 8.0x"),
    ({"scale": 2, "model": "x5"}, "unknown model"),
])
def test_plan_upscale_errors(request_, message):
    with pytest.raises(UpscaleError, match=message):
        plan_upscale((20, 50), **PAPER_POLICY, **request_)


@pytest.mark.parametrize(("request_", "target"), [
    ({"width": 100}, "100x96 (the aspect ratio kept)"),
    ({"height": 96}, "100x96 (the aspect ratio kept)"),
    ({"width": 400}, "400x384 (the aspect ratio kept)"),
    ({"width": 100, "height": 600}, "100x600 is"),
])
def test_too_small_target_names_the_size_really_produced(request_, target):
    # A width-only request keeps the aspect ratio: the message must not say 100x480 for a 500x480 input.
    with pytest.raises(UpscaleError, match=rf"target {target.replace('(', '[(]').replace(')', '[)]')} .*"
                                           r"smaller than the input 500x480"):
        plan_upscale((480, 500), **request_)


def test_plan_upscale_custom_max_scale():
    assert plan_upscale((10, 10), scale=12, max_scale=16).out_size == (120, 120)
    with pytest.raises(UpscaleError, match="above the maximum of 3"):
        plan_upscale((10, 10), scale=4, max_scale=3)


def test_upscale_error_is_value_error():
    assert issubclass(UpscaleError, ValueError)


def test_a_camera_model_runs_the_any_scale_path_with_its_own_weights():
    plan = plan_upscale((20, 50), scale=3, model="as:my_camera", available=["as", "as:my_camera"])
    assert [(s.model, s.size) for s in plan.stages] == [("as:my_camera", (60, 150))] and plan.label == "as:my_camera"
    with pytest.raises(UpscaleError, match="as:other is needed"):
        plan_upscale((20, 50), scale=3, model="as:other", available=["as", "as:my_camera"])
    for bad in ("as:", "as:My Camera", "as:../x", "x2:cam"):
        with pytest.raises(UpscaleError, match="unknown model"):
            plan_upscale((20, 50), scale=2, model=bad)


def test_network_of_names_the_architecture():
    assert [network_of(m) for m in ("x2", "x3", "x4", "as", "as:cam-1")] == ["x2", "x3", "x4", "as", "as"]
    assert is_model_choice("as:cam_2") and not is_model_choice("as:Cam") and not is_model_choice("x5")


@pytest.mark.parametrize("request_", [{"scale": 1}, {"width": 50}, {"height": 20}, {"width": 50, "height": 20}])
def test_restore_only_runs_imdn_as_at_the_input_size(request_):
    """Output at the input's own size: IMDN_AS with no resize before it, for photos (the default content)."""
    plan = plan_upscale((20, 50), **request_)
    assert plan.stages == (Stage("as", (20, 50)),) and plan.restore_only and plan.scale == (1.0, 1.0)
    assert plan_upscale((20, 50), scale=1, model="as:cam", content="clean").stages == (Stage("as:cam", (20, 50)),)
    with pytest.raises(UpscaleError, match="model as is needed"):
        plan_upscale((20, 50), scale=1, available={"x2", "x3", "x4"})


@pytest.mark.parametrize(("in_size", "box", "fit", "out", "crop"), [
    ((20, 50), (100, 100), "fill", (100, 100), None),
    ((20, 50), (100, 100), "contain", (40, 100), None),  # width binds
    ((50, 20), (100, 100), "contain", (100, 40), None),  # height binds
    ((20, 50), (100, 100), "cover", (100, 100), Crop(0, 15, 20, 20)),  # the centred 20x20 square
    ((50, 20), (30, 60), "cover", (60, 30), Crop(5, 0, 40, 20)),
    ((20, 50), (150, 60), "cover", (60, 150), None),  # same aspect: nothing to crop
    ((33, 17), (1000, 100), "contain", (100, 52), None),
])
def test_fit_sizes_and_crops(in_size, box, fit, out, crop):
    width, height = box
    plan = plan_upscale(in_size, width=width, height=height, fit=fit)
    assert (plan.out_size, plan.crop) == (out, crop)
    assert fit_box(in_size, width, height, fit) == (out, crop)
    if crop is not None:  # the crop has the box's aspect ratio: one scale on both axes
        assert plan.source_size == (crop.height, crop.width)
        assert plan.scale[0] == pytest.approx(plan.scale[1], rel=0.03)


def test_fit_applies_only_to_a_box():
    """One side given keeps the aspect ratio anyway: fit changes nothing there."""
    assert plan_upscale((20, 50), width=100, fit="cover") == plan_upscale((20, 50), width=100)
    assert plan_upscale((20, 50), scale=2, fit="contain") == plan_upscale((20, 50), scale=2)
