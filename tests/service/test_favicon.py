"""The page's icon: a real ICO with the sizes browsers ask for, drawn once."""

from __future__ import annotations

import io

from PIL import Image

from service.favicon import favicon_ico


def test_favicon_is_an_ico_with_every_size() -> None:
    data = favicon_ico()
    with Image.open(io.BytesIO(data)) as icon:
        assert icon.format == "ICO"
        assert {(16, 16), (32, 32), (48, 48), (64, 64)} <= set(icon.info["sizes"])
        icon.size = (64, 64)
        icon.load()
        assert icon.convert("RGBA").getpixel((32, 4))[:3] == (36, 87, 214)  # the page's accent
    assert favicon_ico() is data  # drawn once
