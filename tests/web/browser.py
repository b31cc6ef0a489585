"""Helpers for driving the page in Chromium under its Content-Security-Policy."""

from __future__ import annotations

import time

WAIT_MS = 60_000  # a busy 2-core machine; the requests themselves take well under a second


def wait_for(page, expression: str, timeout_ms: int = WAIT_MS) -> None:
    """Poll a JavaScript expression until it is truthy. Not page.wait_for_function: its polling evaluates
    a string inside the page, which the page's CSP (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout_ms} ms: {expression}"
        time.sleep(0.05)
