"""The request's parameters (service/params.py): query and form fields merge into one validated model."""

from __future__ import annotations

import pytest

from service.errors import BadRequestError
from service.params import UPSCALE_BODY, UpscaleParams, merge_form_fields, single_values


def test_form_fields_merge_with_the_query() -> None:
    query = UpscaleParams(scale=3, format="webp")
    merged = merge_form_fields(query, {"scale": "3.0", "quality": "70"})
    assert (merged.scale, merged.format, merged.quality) == (3, "webp", 70)
    assert merge_form_fields(query, {}) is query


def test_query_and_form_that_disagree_are_a_bad_request() -> None:
    """The form used to win; now neither does (issue 30)."""
    with pytest.raises(BadRequestError, match="scale is 3.0 in the query but 2.5 in the form"):
        merge_form_fields(UpscaleParams(scale=3), {"scale": "2.5"})


def test_repeated_values_are_a_bad_request() -> None:
    assert single_values([("scale", "2"), ("format", "png")], "query parameter") == {"scale": "2", "format": "png"}
    with pytest.raises(BadRequestError, match="'scale' is given more than once"):
        single_values([("scale", "2"), ("scale", "2")], "query parameter")


@pytest.mark.parametrize("value", ["2", "2.5", "2.", ".5", "+2", "-1", "2e0", "1E1"])
def test_plain_decimal_numbers_are_read(value: str) -> None:
    assert UpscaleParams.plain_number(value) == value


@pytest.mark.parametrize("value", ["1_0", " 2", "2 ", "\uff12", "0x10", "inf", "nan", "2,5", ""])
def test_other_number_syntax_is_refused(value: str) -> None:
    with pytest.raises(BadRequestError, match="plain decimal"):
        merge_form_fields(UpscaleParams(), {"scale": value})


def test_a_bad_form_field_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="scale"):
        merge_form_fields(UpscaleParams(), {"scale": "0.5"})
    with pytest.raises(BadRequestError, match="colour"):
        merge_form_fields(UpscaleParams(), {"colour": "red"})


def test_the_multipart_body_documents_every_parameter() -> None:
    schema = UPSCALE_BODY["content"]["multipart/form-data"]["schema"]  # type: ignore[index]
    assert set(schema["properties"]) == {"image", *UpscaleParams.model_fields}
