"""Pages scanned sideways or upside down are turned before reading, and upright pages are never turned.

Cheap signs first, from the lines already read upright: most text boxes standing tall means a page on its
side (try 90° and 270°); a page read with little confidence whose long lines PP-OCR's text-line classifier
mostly calls 180° is upside down (try 180°). A turn is kept only if the page reads clearly better turned
(recognition confidence x characters), so the classifier's per-line mistakes (the reason it is off per
line) cannot flip a page.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engines.cpu_models import Models
from engines.layout import Line

TALL_SHARE = 0.5  # share of characters in boxes at least 1.5x taller than wide
FLIP_VOTE = 0.6  # share of long lines the classifier calls 180°
SURE = 0.9  # mean recognition confidence above which a page is upright (upright pages 0.99, upside down < 0.7)
BETTER = 1.3  # a turned page must read this much better


def quality(lines: list[Line]) -> float:
    return sum(ln.score * len(ln.text.strip()) for ln in lines if ln.score >= 0.5)


def _flip_vote(models: Models, bgr: np.ndarray, lines: list[Line]) -> float:
    long = sorted((ln for ln in lines if ln.w >= 3 * ln.h and ln.h >= 6), key=lambda ln: -ln.w)[:30]
    crops = [np.ascontiguousarray(bgr[int(ln.y0) : int(ln.y1) + 1, int(ln.x0) : int(ln.x1) + 1]) for ln in long]
    verdicts = models.line_angles([c for c in crops if c.size])
    if not verdicts:
        return 0.0
    return sum(label == "180" and score >= 0.9 for label, score in verdicts) / len(verdicts)


def upright(
    models: Models, bgr: np.ndarray, lines: list[Line], read: Callable[[np.ndarray], list[Line]]
) -> tuple[int, list[Line]]:
    """(k, lines): np.rot90(bgr, k) is the upright page and `lines` were read on it (k = 0: as sent)."""
    chars = sum(len(ln.text) for ln in lines)
    if not chars:
        return 0, lines
    tall = sum(len(ln.text) for ln in lines if ln.h >= 1.5 * ln.w) / chars
    confidence = sum(ln.score * len(ln.text) for ln in lines) / chars
    if tall >= TALL_SHARE:
        candidates = [1, 3]
    elif confidence < SURE and _flip_vote(models, bgr, lines) >= FLIP_VOTE:
        candidates = [2]
    else:
        return 0, lines
    best_k, best_lines, best_q = 0, lines, quality(lines)
    for k in candidates:
        turned = read(np.ascontiguousarray(np.rot90(bgr, k)))
        q = quality(turned)
        if q > BETTER * best_q:
            best_k, best_lines, best_q = k, turned, q
    return best_k, best_lines


def box_mapper(k: int, pw: float, ph: float) -> Callable[[tuple], tuple] | None:
    """Maps a box on np.rot90(image, k) (size pw x ph) to the same box on the image as sent."""
    if k == 0:
        return None

    def unturn(box: tuple) -> tuple:
        x0, y0, x1, y1 = box
        if k == 1:
            xs, ys = (ph - y0, ph - y1), (x0, x1)
        elif k == 2:
            xs, ys = (pw - x0, pw - x1), (ph - y0, ph - y1)
        else:
            xs, ys = (y0, y1), (pw - x0, pw - x1)
        return min(xs), min(ys), max(xs), max(ys)

    return unturn
