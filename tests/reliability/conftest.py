"""Fixtures for the reliability tests (bad inputs, fuzzing, faults, security).

Fast by design (the machine is shared): random-init weights written once per session, one warm
in-process app per module, real uvicorn processes only where a real socket matters.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from tests.samples import random_weights

# `pytest tests/reliability --hypothesis-profile=long` (this conftest is loaded before the option is read
# when the folder or one of its files is on the command line); IMDN_FUZZ_EXAMPLES overrides the count.
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("IMDN_FUZZ_EXAMPLES") or 2000),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """In-process apps run inference in this process: keep it to one core (the machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x2/x3/x4/as with random-init weights (seed 0): the trained defaults may not exist yet."""
    return random_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where real servers start (no .env there) and write their logs."""
    return tmp_path_factory.mktemp("servers")

