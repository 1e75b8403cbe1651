"""PDF opening with clear errors, page selection, and page rendering in worker processes.

PyMuPDF is not thread-safe, so pages render in a process pool: each worker opens the PDF from its path
once (a small per-process cache) and returns raw RGB pixels for one page. Callers keep only a bounded
window of rendered pages in memory.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import pymupdf
from PIL import Image

from errors import InputError

_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d*)\s*)?$")


def open_pdf(data_or_path: bytes | Path, password: str | None = None) -> pymupdf.Document:
    """Open and unlock a PDF, or raise a 4xx InputError saying what is wrong."""
    if isinstance(data_or_path, bytes):
        if not data_or_path:
            raise InputError(400, "empty_file", "the PDF is empty (0 bytes)", accepted=["PDF"])
        if b"%PDF" not in data_or_path[:1024]:
            raise InputError(415, "not_a_pdf", "the file is not a PDF (no %PDF header)", accepted=["PDF"])
    try:
        doc = (
            pymupdf.open(stream=data_or_path, filetype="pdf")
            if isinstance(data_or_path, bytes)
            else pymupdf.open(data_or_path, filetype="pdf")
        )
    except Exception as e:  # PyMuPDF raises FileDataError, RuntimeError, ValueError for broken files
        raise InputError(422, "corrupt_pdf", f"the PDF could not be opened: {e}", accepted=["PDF"]) from e
    if doc.needs_pass:
        if not password:
            raise InputError(
                422, "pdf_encrypted", "the PDF is password-protected: send its password in the `password` field"
            )
        if not doc.authenticate(password):
            raise InputError(422, "pdf_wrong_password", "the password does not open this PDF")
    if doc.page_count == 0:
        raise InputError(422, "empty_pdf", "the PDF has no pages")
    return doc


def parse_pages(spec: str | None, page_count: int) -> list[int]:
    """'1-3,7,10-' -> 0-based page indexes, in order, without duplicates. None/'' = every page."""
    if not spec or not spec.strip() or spec.strip().lower() == "all":
        return list(range(page_count))
    out: list[int] = []
    for part in spec.split(","):
        m = _RANGE_RE.match(part)
        if not m:
            raise InputError(
                422, "bad_pages", f"cannot read page range {part.strip()!r}", accepted=["1-3,7", "5-", "all"]
            )
        first = int(m.group(1))
        last = first if m.group(2) is None else (int(m.group(2)) if m.group(2) else page_count)
        if first < 1 or last < first or last > page_count:
            raise InputError(422, "bad_pages", f"page range {part.strip()!r} is outside 1-{page_count}")
        out.extend(i for i in range(first - 1, last) if i not in out)
    return out


def dpi_for(page_rect: pymupdf.Rect, dpi: int, max_pixels: int) -> int:
    """The requested dpi, lowered if the page would exceed the pixel limit at it."""
    px = page_rect.width * page_rect.height * (dpi / 72) ** 2
    if px <= max_pixels:
        return dpi
    return max(1, math.floor(dpi * math.sqrt(max_pixels / px)))


@lru_cache(maxsize=4)
def _cached_doc(path: str, password: str | None) -> pymupdf.Document:
    return open_pdf(Path(path), password)


def render_page_raw(
    path: str, index: int, dpi: int, password: str | None, max_pixels: int
) -> tuple[int, int, int, bytes]:
    """Worker-process side: (width, height, dpi used, RGB bytes) of one page."""
    page = _cached_doc(path, password)[index]
    used = dpi_for(page.rect, dpi, max_pixels)
    pix = page.get_pixmap(dpi=used, alpha=False, colorspace=pymupdf.csRGB)
    return pix.width, pix.height, used, bytes(pix.samples)


def to_image(raw: tuple[int, int, int, bytes]) -> tuple[Image.Image, int]:
    w, h, used, samples = raw
    return Image.frombytes("RGB", (w, h), samples), used


def make_render_pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
