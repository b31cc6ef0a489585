"""GET /docs in real headless Chromium with the network cut off beyond the service: Swagger UI must still render."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from tests.live_service import ServiceProcess

WAIT_MS = 60_000


def test_docs_render_with_no_external_requests(browser, web_server: ServiceProcess, artifacts: Path):
    own = urlsplit(web_server.url).netloc
    outside: list[str] = []

    def only_this_server(route, request) -> None:  # a cluster without internet access, simulated
        if urlsplit(request.url).netloc == own:
            route.continue_()
        else:
            outside.append(request.url)
            route.abort()

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", only_this_server)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{web_server.url}/docs")
        # Swagger UI has fetched /openapi.json and drawn the operations.
        page.wait_for_selector("#operations-default-superresolve_v1_superresolve_post, .opblock-summary-path",
                               timeout=WAIT_MS)
        assert "IMDN super-resolution" in page.inner_text(".info .title")
        paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
        assert "/v1/superresolve" in "".join(paths)
        page.screenshot(path=str(artifacts / "docs.png"), full_page=False)
    finally:
        context.close()
    assert outside == [], f"/docs asked for resources outside the service: {outside}"
    assert not errors, f"JavaScript errors on /docs: {errors}"
