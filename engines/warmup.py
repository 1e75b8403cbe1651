"""VLLM_WARMUP_PAGES: the pages the managed `vllm serve` gets before it is reported ready.

A started `vllm serve` does first-time work on its first pages: each API process sets up its processor, the
engine meets its first encoder batches and prefill chunks of a burst's sizes. On H100s (bench/RESULTS.md) the
first 256-page burst after a start ran at 0.83-0.95x the second, with vLLM's median time before its queue twice
as long. A few dozen A4 pages at once, two tokens each, through the normal path (page files, lanes) do that work
before users arrive (6 s on an H100). Each goes as a user's PNG upload does (VLLM_PAGE_SOURCES: the file itself,
decoded by vLLM's API processes).
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

import pipeline
from config import Settings
from deepseek_ocr import OCREngine, OCRRequest

A4 = (1240, 1754)  # 150 dpi: the size the throughput figures use
TOKENS = 2


def warm_page(size: tuple[int, int] = A4) -> Image.Image:
    """A white page with lines of text."""
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    for y in range(60, size[1] - 60, 28):
        draw.text((60, y), f"Warm-up line {y}: the quick brown fox jumps over the lazy dog 0123456789", fill="black")
    return page


def warm_requests(engine: OCREngine, settings: Settings, pages: int) -> list[OCRRequest]:
    """`pages` requests for one page each, built as a user's page is (default prompt and mode, the guard as
    configured), with two tokens each."""
    page, png = warm_page(), io.BytesIO()
    page.save(png, "PNG")
    source = ("image/png", png.getvalue())  # an upright RGB PNG: it stands for the page (load_page)
    return [
        pipeline.build_request(settings, page, None, engine=engine, max_tokens=TOKENS, ignore_eos=True, source=source)
        for _ in range(pages)
    ]
