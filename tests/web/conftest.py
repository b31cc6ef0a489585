"""Fixtures for the page test: a live service process (random weights) and headless Chromium via Playwright."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The live-server helper lives with the client tests; both suites start the service the same way.
for path in (REPO, REPO / "tests" / "client"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from tests.client.live_server import live_server  # noqa: E402
from tests.live_service import ServiceProcess  # noqa: E402
from tests.samples import random_weights  # noqa: E402

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
ARTIFACTS = REPO / "artifacts"


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """The Debian chromium driven by Playwright (never `playwright install`'s download). Package scope:
    Playwright's sync API keeps its event loop running until it stops, and tests outside this folder
    (asyncio.run in the clients' tests) must not run inside it, whatever order they are collected in."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM=/path/to/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright missing: pip install playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    weights = random_weights(tmp_path_factory.mktemp("weights"))
    with live_server(weights, tmp_path_factory.mktemp("service")) as live:
        yield live


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
