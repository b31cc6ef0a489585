"""The API reference page (service/apidocs.py): Swagger UI served offline, from this server."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.anyio
async def test_docs_assets_come_from_this_server(client: httpx.AsyncClient) -> None:
    page = (await client.get("/docs")).text
    assert "cdn." not in page and "https://" not in page, page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in page
        response = await client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000
