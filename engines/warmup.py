"""VLLM_WARMUP_PAGES: the pages the managed `vllm serve` gets before it is reported ready.

A started `vllm serve` does first-time work on its first pages: each API process sets up its processor, the
engine meets its first encoder batches and prefill chunks of a burst's sizes. On H100s (bench/RESULTS.md) the
first 256-page burst after a start ran at 0.83-0.95x the second, with vLLM's median time before its queue twice
as long. A few dozen A4 pages at once, two tokens each, through the normal path (page files, lanes) do that work
before users arrive (6 s on an H100).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from config import Settings
from deepseek_ocr import OCREngine, OCRRequest, resolve_prompt
from process.image_process import get_mode, plan_tiles

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
    """`pages` requests for one page each, in the engine's default mode, with the repetition guard as configured."""
    page = warm_page()
    mode = get_mode(None, engine.default_mode(), engine.modes)
    plan = plan_tiles(page.width, page.height, mode, settings.min_crops, settings.max_crops, engine.token_strategy)
    spec = resolve_prompt(None)
    guard = {"ngram_size": settings.ngram_size, "ngram_window": settings.ngram_window,
             "ngram_whitelist": tuple(settings.ngram_whitelist_token_ids)}  # fmt: skip
    return [
        OCRRequest(page, spec, mode, plan, max_tokens=TOKENS, ignore_eos=True, request_id=f"warm-up-{i}", **guard)
        for i in range(pages)
    ]
