"""/docs with Swagger UI served from an installed package (fastapi-offline's copy), never from a CDN:
clusters without internet access, and pages under a strict CSP, still render it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"


def swagger_assets() -> Path:
    """The folder holding swagger-ui-bundle.js and swagger-ui.css (found without importing the package)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fastapi-offline is not installed; it provides the Swagger UI assets for /docs "
                           "(pip install -c constraints.txt fastapi-offline), or set IMDN_DOCS=false")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def install_docs(app: FastAPI) -> None:
    """GET /docs (Swagger UI) and its assets; the app must have been built with docs_url=None."""
    assets = swagger_assets()
    app.mount(ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} - API reference",
                                   swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_URL}/favicon.png")

    app.add_api_route("/docs", docs, include_in_schema=False, response_class=HTMLResponse)
