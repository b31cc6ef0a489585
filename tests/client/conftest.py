"""Fixtures for the client tests: random weights and a live service process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `pytest tests/client` without the package installed
    sys.path.insert(0, str(REPO))

from tests.client.live_server import live_server  # noqa: E402
from tests.live_service import ServiceProcess  # noqa: E402
from tests.samples import random_weights  # noqa: E402


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def server(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service with default admission (2 running, 8 queued): shared by the tests that expect no refusals."""
    with live_server(weights_dir, tmp_path_factory.mktemp("service")) as live:
        yield live
