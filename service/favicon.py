"""The web page's favicon, drawn with Pillow."""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageDraw


@functools.cache
def favicon_ico() -> bytes:
    """The page's icon, drawn here (nothing binary in the repository): big pixels turning into fine ones."""
    side = 64
    icon = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle((0, 0, side - 1, side - 1), radius=12, fill=(36, 87, 214, 255))  # the page's accent
    for i, shade in enumerate((150, 205, 205, 255)):  # coarse 2x2 on the left, fine 8x8 on the right
        x, y = 8 + (i % 2) * 12, 20 + (i // 2) * 12
        draw.rectangle((x, y, x + 11, y + 11), fill=(shade, shade, 255, 255))
    for row in range(8):
        for col in range(8):
            shade = 150 + 105 * ((row + col) % 2)
            x, y = 34 + col * 3, 20 + row * 3
            draw.rectangle((x, y, x + 2, y + 2), fill=(shade, shade, 255, 255))
    out = io.BytesIO()
    icon.save(out, format="ICO", sizes=[(16, 16), (32, 32), (48, 48), (64, 64)])
    return out.getvalue()
