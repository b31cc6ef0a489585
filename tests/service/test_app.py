"""The app's request middleware (service/app.py): bounded metric labels and the request ids it keeps."""

from __future__ import annotations

import pytest

from service.app import REQUEST_ID, status_label


@pytest.mark.parametrize(("status", "label"), [(200, "200"), (499, "499"), (503, "503"), (299, "2xx"),
                                               (42, "1xx"), (1000, "5xx")])
def test_status_labels_come_from_a_bounded_set(status: int, label: str) -> None:
    assert status_label(status) == label


@pytest.mark.parametrize(("offered", "kept"), [("0af3-req_1.b:c/d+e", True), ("x" * 128, True), ("x" * 129, False),
                                               ("a b", False), ('a"b', False), ("a=b", False), ("é", False),
                                               ("", False)])
def test_request_ids_kept_only_when_they_look_like_ids(offered: str, kept: bool) -> None:
    assert bool(REQUEST_ID.fullmatch(offered)) is kept
