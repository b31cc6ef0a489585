"""The request's parameters (service/params.py): query and form fields merge into one validated model."""

from __future__ import annotations

import pytest

from service.errors import BadRequestError
from service.params import UPSCALE_BODY, UpscaleParams, merge_form_fields


def test_form_fields_override_the_query() -> None:
    query = UpscaleParams(scale=3, format="webp")
    merged = merge_form_fields(query, {"scale": "2.5", "quality": "70"})
    assert (merged.scale, merged.format, merged.quality) == (2.5, "webp", 70)
    assert merge_form_fields(query, {}) is query


def test_a_bad_form_field_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="scale"):
        merge_form_fields(UpscaleParams(), {"scale": "1"})
    with pytest.raises(BadRequestError, match="colour"):
        merge_form_fields(UpscaleParams(), {"colour": "red"})


def test_the_multipart_body_documents_every_parameter() -> None:
    schema = UPSCALE_BODY["content"]["multipart/form-data"]["schema"]  # type: ignore[index]
    assert set(schema["properties"]) == {"image", *UpscaleParams.model_fields}
