"""The page as a person uses it, at desktop and at phone width: real Chromium, real service process.

A person opens the page, reads the hint, clicks (or taps) the drop zone and picks a photo, presses
Upscale and looks at the result; then makes a mistake (a target smaller than the photo) and must
see the error, not the old result; fixes it; picks another photo. At each step the test checks what
is on screen: visible, inside the window, panels not overlapping, nothing cut off. Screenshots go to
artifacts/ (gitignored) for a human to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.client.live_server import png_bytes
from tests.live_service import ServiceProcess
from tests.web.browser import wait_for

SCREENS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True,
              "has_touch": True},
}

# Every text #status shows, with whether the old result was on screen at that moment.
RECORD_STATUS = """() => {
  window.statusLog = [];
  if (window.statusObserved) return;
  window.statusObserved = true;
  new MutationObserver(() => window.statusLog.push([document.getElementById('status').textContent,
                                                    document.getElementById('result-section').hidden]))
    .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
}"""

# Boxes of what a person looks at and touches, for the layout checks.
VISIBLE_BOXES = """() => {
  const sel = 'h1, h2, label.drop, #file-info, .radios label, .presets button, select, input[type=number],'
    + ' #submit, #status, #error, #policy-hint, #compare, #compare-slider, #download, .zoom canvas, #info';
  return [...document.querySelectorAll(sel)].filter((e) => e.getClientRects().length).map((e) => {
    const r = e.getBoundingClientRect();
    return {id: e.id || e.tagName + ':' + e.textContent.trim().slice(0, 20), left: r.left, right: r.right,
            width: r.width, height: r.height, clipped: e.scrollWidth > e.clientWidth + 1 && e.tagName !== 'SELECT'
              && e.tagName !== 'INPUT'};
  });
}"""


@pytest.fixture(params=list(SCREENS))
def person(request: pytest.FixtureRequest, browser, web_server: ServiceProcess) -> Iterator[tuple[str, object]]:
    context = browser.new_context(**SCREENS[request.param])
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    # A refused upscale is part of the story; any other failed request (a missing icon, say) is a defect.
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/v1/superresolve") else None)
    page.goto(f"{web_server.url}/")
    page.wait_for_load_state("networkidle")
    yield request.param, page
    context.close()
    assert not problems, problems


def press(screen: str, locator: object) -> None:
    """A click with a mouse, a tap on a phone."""
    if screen == "phone":
        locator.tap()  # type: ignore[attr-defined]
    else:
        locator.click()  # type: ignore[attr-defined]


def pick_file(screen: str, page, name: str, data: bytes) -> None:
    with page.expect_file_chooser() as chooser:
        press(screen, page.get_by_text("Choose an image", exact=True))
    chooser.value.set_files(files=[{"name": name, "mimeType": "image/png", "buffer": data}])


def assert_layout_sound(screen: str, page, step: str) -> None:
    width = page.evaluate("window.innerWidth")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{screen}, {step}: the page is {overflow} px wider than the window"
    for box in page.evaluate(VISIBLE_BOXES):
        assert box["left"] >= -0.5 and box["right"] <= width + 0.5, f"{screen}, {step}: {box} leaves the window"
        assert box["width"] > 0 and box["height"] > 0, f"{screen}, {step}: {box} has no size"
        assert not box["clipped"], f"{screen}, {step}: {box} cuts its text off"
    form, result = (page.locator("section.panel").nth(i).bounding_box() for i in range(2))
    if screen == "phone":  # one column: the result under the form
        assert result["y"] >= form["y"] + form["height"], (form, result)
    else:  # two columns, side by side
        assert result["x"] >= form["x"] + form["width"], (form, result)
        assert abs(result["y"] - form["y"]) < 1
    for button in page.locator("button, a.button").all():
        if button.is_visible():
            assert button.bounding_box()["height"] >= 24, f"{screen}, {step}: a button too small to tap"


def upscale(screen: str, page) -> list[list[object]]:
    """Press Upscale and wait until the request has ended; the status log of the request."""
    page.evaluate(RECORD_STATUS)
    press(screen, page.get_by_role("button", name="Upscale"))
    wait_for(page, "/^(Done|Failed)/.test(document.getElementById('status').textContent)")
    return page.evaluate("window.statusLog")


def test_a_person_upscales_errs_and_recovers(person, web_server: ServiceProcess, artifacts: Path):
    screen, page = person
    assert page.title() == "IMDN super-resolution"
    icon = page.evaluate("() => fetch(document.querySelector('link[rel=icon]').href)"
                         ".then((r) => [r.status, r.headers.get('content-type')])")
    assert icon == [200, "image/x-icon"]
    # The hint under the model choice is the server's own statement of its scale policy.
    policy = httpx.get(f"{web_server.url}/v1/models", timeout=30).json()["scale_policy"]
    assert page.inner_text("#policy-hint") == policy
    assert page.is_visible("#empty") and page.is_hidden("#result-section")
    assert_layout_sound(screen, page, "on arrival")

    # Pick a photo and upscale it x2 (the default).
    pick_file(screen, page, "holiday.png", png_bytes(160, 120))
    wait_for(page, "document.getElementById('file-info').textContent.includes('160×120')")
    log = upscale(screen, page)
    assert log[-1][0].startswith("Done"), log
    assert page.is_visible("#result-section") and page.is_hidden("#empty") and page.is_hidden("#error")
    size = page.evaluate("() => { const r = document.getElementById('result');"
                         " return [r.complete, r.naturalWidth, r.naturalHeight]; }")
    assert size == [True, 320, 240]
    page.locator("#compare").scroll_into_view_if_needed()
    assert page.locator("#compare").bounding_box()["height"] > 50
    assert page.get_attribute("#download", "download") == "holiday_x2.png"
    assert_layout_sound(screen, page, "with a result")
    page.screenshot(path=str(artifacts / f"person-{screen}-result.png"), full_page=True)

    # A mistake: a target width smaller than the photo. The old result goes as soon as the request starts,
    # and the error names the size a width-only request would really produce.
    page.locator("#form").scroll_into_view_if_needed()
    press(screen, page.get_by_label("Target size"))
    page.get_by_label("Width (px)").fill("100")
    log = upscale(screen, page)
    assert log[0][0].startswith("Uploading") and log[0][1] is True, f"the old result stayed on screen: {log}"
    assert page.is_visible("#error")
    assert "400" in page.inner_text("#status")
    assert "100x75 (the aspect ratio kept) is smaller than the input 160x120" in page.inner_text("#error-detail")
    assert page.is_hidden("#result-section") and page.is_visible("#empty")
    assert page.get_attribute("#download", "href") is None
    page.locator("#error").scroll_into_view_if_needed()
    assert_layout_sound(screen, page, "with an error")
    page.screenshot(path=str(artifacts / f"person-{screen}-error.png"), full_page=True)

    # Fixed: the error goes, the new result comes.
    page.get_by_label("Width (px)").fill("240")
    log = upscale(screen, page)
    assert log[-1][0].startswith("Done"), log
    assert page.is_hidden("#error") and page.is_visible("#result-section")
    assert "240×180" in page.inner_text("#info")
    assert page.get_attribute("#download", "download") == "holiday_240x180.png"

    # Another photo: the result of the first one must not stay beside its name.
    page.locator("#form").scroll_into_view_if_needed()
    pick_file(screen, page, "second.png", png_bytes(90, 60, seed=1))
    wait_for(page, "document.getElementById('file-info').textContent.includes('second.png')")
    assert page.is_hidden("#result-section") and page.is_visible("#empty")
    assert_layout_sound(screen, page, "after choosing another photo")
