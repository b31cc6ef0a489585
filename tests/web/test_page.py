"""The page at GET /, end to end: real headless Chromium, real service process (random weights).

Screenshots go to artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.live_server import png_bytes
from tests.live_service import ServiceProcess

WAIT_MS = 60_000  # a busy 2-core machine; the requests themselves take well under a second

# Records every text #status shows, so the test can check the upload -> processing -> done sequence.
RECORD_STATUS = """() => {
  window.statusLog = [];
  new MutationObserver(() => window.statusLog.push(document.getElementById('status').textContent))
    .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture
def page(browser, web_server: ServiceProcess) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{web_server.url}/")
    page.wait_for_load_state("networkidle")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_page_upscales_compares_and_zooms(page, artifacts: Path):
    assert page.title() == "IMDN super-resolution"
    assert page.is_disabled("#submit")
    assert "models x2, x3, x4, as" in page.inner_text("footer")  # the page read /v1/models

    page.set_input_files("#file", files=[{"name": "tiny.png", "mimeType": "image/png", "buffer": png_bytes(160, 120)}])
    page.wait_for_function("document.getElementById('file-info').textContent.includes('160×120')")
    page.click("#preset-3")
    page.click("#preset-2")
    assert page.input_value("#scale") == "2"
    assert page.get_attribute("#preset-2", "aria-pressed") == "true"
    assert page.get_attribute("#preset-3", "aria-pressed") == "false"

    page.evaluate(RECORD_STATUS)
    page.click("#submit")
    page.wait_for_selector("#result-section", state="visible", timeout=WAIT_MS)

    size = page.evaluate("() => { const r = document.getElementById('result');"
                         " return [r.naturalWidth, r.naturalHeight]; }")
    assert size == [320, 240]
    log = page.evaluate("window.statusLog")
    assert log[0].startswith("Uploading") and log[-1].startswith("Done"), log
    assert any(s.startswith(("Processing", "Downloading")) for s in log), log
    assert page.get_attribute("#download", "download") == "tiny_x2.png"
    assert page.get_attribute("#download", "href").startswith("blob:")
    info = page.inner_text("#info")
    assert "x2" in info and "320×240" in info and "160×120" in info
    timings = page.inner_text("#timings")
    for row in ("server decode", "server inference", "server encode", "total"):
        assert row in timings

    # Both layers share one display box; the divider clips "after" at the slider's position.
    boxes = page.evaluate("() => ['before', 'result'].map(id => {"
                          " const r = document.getElementById(id).getBoundingClientRect();"
                          " return [r.width, r.height]; })")
    assert boxes[0] == boxes[1] and boxes[0][0] > 0
    clip = page.evaluate("getComputedStyle(document.getElementById('result')).clipPath")
    assert "50%" in clip
    slider = page.locator("#compare-slider").bounding_box()
    page.mouse.click(slider["x"] + slider["width"] * 0.2, slider["y"] + slider["height"] / 2)
    value = float(page.input_value("#compare-slider"))
    assert 10 < value < 30
    moved = page.evaluate("getComputedStyle(document.getElementById('result')).clipPath")
    assert moved != clip and f"{value:g}%" in moved

    # The nearest-neighbour toggle switches the "before" rendering and its label.
    page.check("#pixelated")
    assert page.evaluate("getComputedStyle(document.getElementById('before')).imageRendering") == "pixelated"
    assert "nearest" in page.inner_text("#before-tag")

    # Hovering picks the 1:1 zoom region; clicking pins it.
    compare = page.locator("#compare").bounding_box()
    page.mouse.move(compare["x"] + compare["width"] * 0.95, compare["y"] + compare["height"] * 0.95)
    marker = page.evaluate("() => { const s = document.getElementById('zoom-marker').style; return [s.left, s.top]; }")
    assert marker == ["40%", "20%"]  # a 192 px region clamped into the 320x240 output's bottom-right corner
    page.mouse.click(compare["x"] + 10, compare["y"] + 10)
    assert "Pinned" in page.inner_text("#zoom-hint")
    zoom = page.evaluate("""() => ['zoom-before', 'zoom-after'].map(id => {
        const c = document.getElementById(id);
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let opaque = 0; for (let i = 3; i < px.length; i += 4) opaque += px[i] > 0;
        return [c.width, c.height, opaque]; })""")
    assert zoom == [[192, 192, 192 * 192]] * 2

    page.screenshot(path=str(artifacts / "page.png"), full_page=True)


def test_page_shows_problem_detail(page, artifacts: Path):
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"}])
    page.click("#submit")
    page.wait_for_selector("#error", state="visible", timeout=WAIT_MS)
    assert page.inner_text("#error-title") == "Not a supported image"
    assert "not a recognised image format" in page.inner_text("#error-detail")
    assert "415" in page.inner_text("#status")
    assert page.is_hidden("#result-section")
    page.screenshot(path=str(artifacts / "page-error.png"), full_page=True)


def test_page_fits_a_phone_screen(browser, web_server: ServiceProcess, artifacts: Path):
    context = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2)
    page = context.new_page()
    try:
        page.goto(f"{web_server.url}/")
        page.set_input_files("#file", files=[{"name": "w.png", "mimeType": "image/png", "buffer": png_bytes(200, 90)}])
        page.click("#submit")
        page.wait_for_selector("#result-section", state="visible", timeout=WAIT_MS)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than the screen"
        width = page.evaluate("document.getElementById('compare').getBoundingClientRect().width")
        assert width <= 375
        page.screenshot(path=str(artifacts / "page-narrow.png"), full_page=True)
    finally:
        context.close()
