"""The benchmarks' synthetic A4 page (150 dpi, lines of text that differ per page), as an image or a PNG."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def page_image(p: int, w: int = 1240, h: int = 1754) -> Image.Image:
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    for y in range(60, h - 60, 28):
        d.text((60, y), f"Page {p} line {y} lorem ipsum dolor sit amet consectetur {p * y}", fill="black")
    return im


def page_png(p: int, w: int = 1240, h: int = 1754) -> bytes:
    buf = io.BytesIO()
    page_image(p, w, h).save(buf, "PNG")
    return buf.getvalue()
