"""The page at GET /, end to end: real headless Chromium, real service process (random weights).

Screenshots go to artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.live_server import live_server, png_bytes
from tests.live_service import ServiceProcess
from tests.samples import heic, photo_exif, random_weights, smooth_image
from tests.web.browser import WAIT_MS, wait_for

# Records every text #status shows, so the test can check the upload -> processing -> done sequence.
RECORD_STATUS = """() => {
  window.statusLog = [];
  new MutationObserver(() => window.statusLog.push(document.getElementById('status').textContent))
    .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
}"""


# Records every Content-Security-Policy violation the browser reports (installed before the page's own script).
RECORD_CSP = """window.cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'}`));"""
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {"viewport": {"width": 375, "height": 740}, "device_scale_factor": 2}


def console_errors(page) -> list[str]:
    """JavaScript exceptions and console errors (CSP refusals among them), except the browser's note for an
    HTTP error status, which the tests cause on purpose (a 401, a 415)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith(
        "Failed to load resource: the server responded with a status of") and errors.append(msg.text))
    page.add_init_script(RECORD_CSP)
    return errors


def open_page(context, url: str) -> tuple[object, list[str]]:
    page = context.new_page()
    errors = console_errors(page)
    page.goto(url)
    page.wait_for_load_state("networkidle")
    return page, errors


@pytest.fixture
def page(browser, web_server: ServiceProcess) -> Iterator[object]:
    context = browser.new_context(**DESKTOP)
    page, errors = open_page(context, f"{web_server.url}/")
    yield page
    violations = page.evaluate("window.cspViolations")
    context.close()
    assert not errors, f"errors on the page: {errors}"
    assert not violations, f"CSP violations: {violations}"


def test_page_upscales_compares_and_zooms(page, artifacts: Path):
    assert page.title() == "IMDN super-resolution"
    assert page.is_disabled("#submit")
    assert "models x2, x3, x4, as" in page.inner_text("footer")  # the page read /v1/models

    page.set_input_files("#file", files=[{"name": "tiny.png", "mimeType": "image/png", "buffer": png_bytes(160, 120)}])
    wait_for(page, "document.getElementById('file-info').textContent.includes('160×120')")
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


def test_page_offers_restore_only_and_fit(page):
    """1× runs IMDN_AS at the image's own size; a box with fit=contain keeps the aspect ratio inside it."""
    page.set_input_files("#file", files=[{"name": "tiny.png", "mimeType": "image/png", "buffer": png_bytes(80, 40)}])
    wait_for(page, "document.getElementById('file-info').textContent.includes('80×40')")
    page.click("#preset-1")
    assert page.input_value("#scale") == "1"
    page.click("#submit")
    page.wait_for_selector("#result-section", state="visible", timeout=WAIT_MS)
    wait_for(page, "document.getElementById('status').textContent.startsWith('Done')")
    assert page.evaluate("() => { const r = document.getElementById('result');"
                         " return [r.naturalWidth, r.naturalHeight]; }") == [80, 40]
    assert "80×40" in page.inner_text("#info")

    page.check("#mode-size")
    page.fill("#width", "200")
    page.fill("#height", "200")
    page.select_option("#fit", "contain")
    page.click("#submit")
    wait_for(page, "document.getElementById('info').textContent.includes('200×100')")
    assert page.get_attribute("#download", "download") == "tiny_200x100.png"


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
    context = browser.new_context(**PHONE)
    page, errors = open_page(context, f"{web_server.url}/")
    try:
        page.set_input_files("#file", files=[{"name": "w.png", "mimeType": "image/png", "buffer": png_bytes(200, 90)}])
        page.click("#submit")
        page.wait_for_selector("#result-section", state="visible", timeout=WAIT_MS)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than the screen"
        width = page.evaluate("document.getElementById('compare').getBoundingClientRect().width")
        assert width <= 375
        page.screenshot(path=str(artifacts / "page-narrow.png"), full_page=True)
        assert not errors and not page.evaluate("window.cspViolations"), errors
    finally:
        context.close()


@pytest.mark.parametrize("device", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_page_works_under_its_csp(browser, web_server: ServiceProcess, device: dict):
    """The page is served with a strict CSP that Chromium enforces (an injected inline script is refused),
    and everything the page does still works under it, at desktop and phone width: no violations."""
    context = browser.new_context(**device)
    try:
        page = context.new_page()
        errors = console_errors(page)
        response = page.goto(f"{web_server.url}/")
        policy = response.headers["content-security-policy"]
        assert "script-src 'self' 'sha256-" in policy and "unsafe-inline" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        wait_for(page, "document.getElementById('service-info').textContent.includes('models')")
        page.set_input_files("#file", files=[{"name": "t.png", "mimeType": "image/png", "buffer": png_bytes(40, 30)}])
        page.select_option("#format", "webp")
        page.click("#submit")
        page.wait_for_selector("#result-section", state="visible", timeout=WAIT_MS)
        assert page.evaluate("document.getElementById('result').naturalWidth") == 80
        page.locator("#compare").hover()  # the zoom canvases draw the blob: images
        assert not errors, errors
        assert page.evaluate("window.cspViolations") == []

        # The policy is really enforced: inline script added to the DOM does not run, and is reported.
        page.evaluate("""() => { const s = document.createElement('script');
            s.textContent = 'window.injected = true'; document.body.append(s); }""")
        wait_for(page, "window.cspViolations.length > 0")
        assert page.evaluate("window.injected") is None
        assert "script-src" in page.evaluate("window.cspViolations")[0]
    finally:
        context.close()


def test_page_reloads_models_once_a_key_is_entered(browser, tmp_path_factory: pytest.TempPathFactory):
    """With API keys on, /v1/models refuses the page until a key is typed; then the footer and the model
    list fill in, and an upscale with that key works."""
    key = "sk-page-" + "4" * 24
    weights = random_weights(tmp_path_factory.mktemp("weights"))
    with live_server(weights, tmp_path_factory.mktemp("service"), api_keys=key, models="x2,x4") as server:
        context = browser.new_context(**DESKTOP)
        try:
            page, errors = open_page(context, f"{server.url}/")
            assert "models" not in page.inner_text("footer")  # 401 without a key
            page.click("#key-details summary")
            page.fill("#api-key", key)
            page.press("#api-key", "Tab")  # the change event
            wait_for(page, "document.getElementById('service-info').textContent.includes('models x2, x4')")
            labels = page.evaluate("[...document.getElementById('model').options].map(o => [o.value, o.disabled])")
            assert dict(labels) == {"auto": False, "x2": False, "x3": True, "x4": False, "as": True}
            assert page.inner_text("#model option[value=x3]").endswith("(not loaded)")
            page.fill("#api-key", key)  # entered again: the labels are rebuilt, not suffixed twice
            page.press("#api-key", "Tab")
            page.set_input_files("#file", files=[{"name": "k.png", "mimeType": "image/png",
                                                  "buffer": png_bytes(30, 20)}])
            page.click("#submit")
            page.wait_for_selector("#result-section", state="visible", timeout=WAIT_MS)
            assert page.inner_text("#model option[value=x3]").count("(not loaded)") == 1
            assert not errors and page.evaluate("window.cspViolations") == [], errors
        finally:
            context.close()


def test_page_takes_a_heic_and_returns_avif_with_metadata(page):
    """A phone's HEIC chosen as a file (the picker offers .heic/.avif: browsers do not all call them image/*),
    AVIF and "keep all" metadata asked: the AVIF comes back and the page says which metadata went with it."""
    wait_for(page, "document.querySelector('#metadata option').textContent === 'server default (nogps)'")
    accept = page.get_attribute("#file", "accept")
    assert {".heic", ".heif", ".avif"} <= set(accept.split(","))
    photo = heic(smooth_image(20, 30), exif=photo_exif(1, 30, 20))
    page.set_input_files("#file", files=[{"name": "IMG_0001.HEIC", "mimeType": "image/heic", "buffer": photo}])
    page.select_option("#format", "avif")
    page.select_option("#metadata", "keep")
    page.click("#submit")
    page.wait_for_selector("#result-section", state="visible", timeout=WAIT_MS)
    assert page.evaluate("document.getElementById('result').naturalWidth") == 60  # Chromium drew the AVIF
    info = page.inner_text("#info")
    assert "image/avif" in info and "exif" in info
    assert page.get_attribute("#download", "download") == "IMG_0001_x2.avif"
