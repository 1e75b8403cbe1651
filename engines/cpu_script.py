"""A warning when a page is inked in a script the CPU model cannot read (Arabic, Hebrew, Korean...).

The PP-OCRv6 models in the wheel read Chinese, Japanese kana, Latin and digits. On other scripts they
return nothing or low-confidence garbage, which would go out as an empty or wrong answer. So: find the
glyph-sized ink of the page (connected components), count how much of it lies in lines read with
confidence, and when most of it does not, name the script from the shape of that unread ink:
cursive strokes much wider than tall (Arabic), glyphs built of parts stacked one above the other in
square blocks (Korean Hangul), else separate blocky letters (Hebrew, or another script).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engines.layout import Line

READ_SCORE = 0.8  # a line read with less confidence counts as unread
MIN_GLYPHS = 40  # fewer glyph-sized components: too little text to judge
UNREAD_SHARE = 0.5  # warn when at least this share of the glyph ink is unread


@dataclass
class InkReport:
    glyphs: int
    unread_share: float
    script: str | None  # named when the unread ink is most of the page's glyph ink


def _glyphs(gray: np.ndarray) -> np.ndarray:
    """Stats rows (x, y, w, h, area) of glyph-sized dark components."""
    _, ink = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    if ink.mean() > 0.5:  # light text on a dark page
        ink = 1 - ink
    _, _, stats, _ = cv2.connectedComponentsWithStats(ink.astype(np.uint8), connectivity=8)
    h, w = gray.shape
    s = stats[1:]
    keep = (s[:, 3] >= 4) & (s[:, 3] <= 0.06 * h) & (s[:, 2] <= 0.2 * w) & (s[:, 4] >= 8)
    return s[keep]


def _read_mask(shape: tuple[int, int], lines: list[Line]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for ln in lines:
        if ln.score >= READ_SCORE and any(c.isalnum() for c in ln.text):
            mask[max(0, int(ln.y0) - 2) : int(ln.y1) + 3, max(0, int(ln.x0) - 2) : int(ln.x1) + 3] = 1
    return mask


def name_script(glyphs: np.ndarray) -> str:
    """The script of unread glyph components, from their shapes."""
    hs = glyphs[:, 3].astype(float)
    big = glyphs[hs >= 0.6 * np.median(hs)]
    if len(big) == 0:
        return "an unsupported script"
    cursive = float(np.mean(big[:, 2] >= 1.8 * big[:, 3]))
    if cursive >= 0.22:  # Arabic pages ~0.29; Hangul 0.07-0.15; Latin ~0.01
        return "Arabic"
    # Hangul syllables: parts stacked vertically inside one square; count components with a partner
    # above or below that overlaps it horizontally by half.
    x0, y0, x1, y1 = big[:, 0], big[:, 1], big[:, 0] + big[:, 2], big[:, 1] + big[:, 3]
    stacked = 0
    order = np.argsort(x0)
    for i in order[:1500]:
        ov = np.minimum(x1[i], x1) - np.maximum(x0[i], x0)
        narrow = np.minimum(big[i, 2], big[:, 2])
        gap = np.maximum(y0 - y1[i], y0[i] - y1)
        near = (ov >= 0.5 * narrow) & (gap >= 0) & (gap <= 0.5 * big[i, 3])
        near[i] = False
        stacked += bool(near.any())
    if stacked / min(len(big), 1500) >= 0.1:  # Hangul pages 0.15-0.29; Latin 0.02-0.03
        return "Korean (Hangul)"
    return "Hebrew or another script"


def inspect(bgr: np.ndarray, lines: list[Line]) -> InkReport:
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    glyphs = _glyphs(gray)
    if len(glyphs) < MIN_GLYPHS:
        return InkReport(len(glyphs), 0.0, None)
    mask = _read_mask(gray.shape, lines)
    cx = np.clip(glyphs[:, 0] + glyphs[:, 2] // 2, 0, gray.shape[1] - 1)
    cy = np.clip(glyphs[:, 1] + glyphs[:, 3] // 2, 0, gray.shape[0] - 1)
    unread = mask[cy, cx] == 0
    share = float(glyphs[unread, 4].sum() / max(1, glyphs[:, 4].sum()))
    # ... and far more unread glyphs than characters read (a picture with a few labels is no script)
    read_chars = sum(c.isalnum() for ln in lines if ln.score >= READ_SCORE for c in ln.text)
    enough = unread.sum() >= max(MIN_GLYPHS, 2 * read_chars)
    script = name_script(glyphs[unread]) if share >= UNREAD_SHARE and enough else None
    return InkReport(len(glyphs), share, script)


def warnings(bgr: np.ndarray, lines: list[Line]) -> list[str]:
    r = inspect(bgr, lines)
    if r.script is None:
        return []
    return [
        f"{round(100 * r.unread_share)}% of this page's text could not be read: it looks like {r.script}, "
        "which the CPU engine's model does not read (use the vllm engine)"
    ]
