"""Reading order and blocks from detected text lines, and DeepSeek-style output for each task.

Pure functions over `Line`s (pixel boxes), so they are tested without any OCR model. Reading order is a
recursive XY-cut: split into columns at vertical gutters that separate prose, else into bands at
paragraph-sized horizontal gaps; the leaves are paragraphs. Headings come from line height.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from rapidfuzz import fuzz


@dataclass
class Line:
    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    score: float = 1.0
    kind: str = "text"  # "image" for a figure region found without text

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


@dataclass
class Block:
    label: str  # title | sub_title | text | image
    lines: list[Line] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # set for blocks without lines (images)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        if self.box is not None:
            return self.box
        return (
            min(ln.x0 for ln in self.lines),
            min(ln.y0 for ln in self.lines),
            max(ln.x1 for ln in self.lines),
            max(ln.y1 for ln in self.lines),
        )


def _split(lines: list[Line], axis: str, min_gap: float) -> list[list[Line]]:
    """Groups of lines separated by empty stripes at least min_gap wide along one axis."""
    key0, key1 = ("x0", "x1") if axis == "x" else ("y0", "y1")
    items = sorted(lines, key=lambda ln: getattr(ln, key0))
    groups: list[list[Line]] = [[items[0]]]
    end = getattr(items[0], key1)
    for ln in items[1:]:
        if getattr(ln, key0) - end >= min_gap:
            groups.append([ln])
        else:
            groups[-1].append(ln)
        end = max(end, getattr(ln, key1))
    return groups


def _rows(lines: list[Line]) -> list[list[Line]]:
    """Lines grouped into visual rows (vertical overlap), top to bottom, each left to right."""
    rows: list[list[Line]] = []
    for ln in sorted(lines, key=lambda ln: ln.cy):
        if rows:
            last = rows[-1]
            top, bottom = min(x.y0 for x in last), max(x.y1 for x in last)
            overlap = min(bottom, ln.y1) - max(top, ln.y0)
            if overlap > 0.5 * min(ln.h, bottom - top):
                last.append(ln)
                continue
        rows.append([ln])
    return [sorted(r, key=lambda ln: ln.x0) for r in rows]


def _is_prose_column(group: list[Line], page_w: float) -> bool:
    widths = [ln.w for ln in group]
    return len(group) >= 2 and statistics.median(widths) >= 0.12 * page_w


def xy_cut(lines: list[Line], line_h: float, page_w: float) -> list[list[Line]]:
    if len(lines) <= 1:
        return [lines] if lines else []
    cols = _split(lines, "x", max(line_h, 8.0))
    if len(cols) > 1 and sum(_is_prose_column(c, page_w) for c in cols) >= 2:
        return [leaf for c in cols for leaf in xy_cut(c, line_h, page_w)]
    bands = _split(lines, "y", 0.8 * line_h)
    if len(bands) > 1:
        return [leaf for b in bands for leaf in xy_cut(b, line_h, page_w)]
    return [[ln for row in _rows(lines) for ln in row]]


def _label(height: float, body_h: float, n_lines: int) -> str:
    if height >= 1.8 * body_h and n_lines <= 3:
        return "title"
    if height >= 1.4 * body_h and n_lines <= 3:
        return "sub_title"
    return "text"


def build_blocks(lines: list[Line], page_w: float, page_h: float) -> list[Block]:
    """Paragraph blocks in reading order, a heading split from the text that follows it."""
    lines = [ln for ln in lines if ln.text.strip() or ln.kind == "image"]
    text_lines = [ln for ln in lines if ln.kind == "text"]
    if not lines:
        return []
    body_h = statistics.median(ln.h for ln in text_lines) if text_lines else 0.02 * page_h
    blocks: list[Block] = []
    for leaf in xy_cut(lines, body_h, page_w):
        rows = _rows(leaf)
        current: list[list[Line]] = []
        for row in rows:
            figures = [ln for ln in row if ln.kind == "image"]
            row = [ln for ln in row if ln.kind == "text"]
            if figures:
                if current:
                    blocks.append(_make_block(current, body_h))
                    current = []
                blocks.extend(Block("image", box=(f.x0, f.y0, f.x1, f.y1)) for f in figures)
            if not row:
                continue
            rh = statistics.median(ln.h for ln in row)
            if current:
                ch = statistics.median(ln.h for r in current for ln in r)
                if max(rh, ch) / max(1.0, min(rh, ch)) > 1.4:  # size change: heading <-> body
                    blocks.append(_make_block(current, body_h))
                    current = []
            current.append(row)
        if current:
            blocks.append(_make_block(current, body_h))
    return blocks


def _make_block(rows: list[list[Line]], body_h: float) -> Block:
    lines = [ln for r in rows for ln in r]
    return Block(_label(statistics.median(ln.h for ln in lines), body_h, len(rows)), lines)


_HYPHEN_END = re.compile(r"[A-Za-z]-$")


def join_lines(texts: list[str]) -> str:
    """Lines of a paragraph as one string; 'exam-' + 'ple' becomes 'example'."""
    out = ""
    for t in texts:
        t = t.strip()
        if not out:
            out = t
        elif _HYPHEN_END.search(out) and t[:1].islower():
            out = out[:-1] + t
        else:
            out += " " + t
    return out


def block_rows_text(block: Block) -> list[str]:
    return [" ".join(ln.text.strip() for ln in row) for row in _rows(block.lines)]


def block_markdown(block: Block) -> str:
    if block.label == "image":
        return ""
    text = join_lines(block_rows_text(block))
    return {"title": "# ", "sub_title": "## "}.get(block.label, "") + text


def norm_box(box: tuple[float, float, float, float], w: float, h: float) -> list[int]:
    """Pixel box -> DeepSeek's 0-999 coordinates."""
    x0, y0, x1, y1 = box
    c = lambda v, s: max(0, min(999, round(v / s * 999)))  # noqa: E731
    return [c(x0, w), c(y0, h), c(x1, w), c(y1, h)]


def _det(boxes: list[list[int]]) -> str:
    return "<|det|>[" + ", ".join("[" + ", ".join(map(str, b)) + "]" for b in boxes) + "]<|/det|>"


def _safe(text: str) -> str:
    return text.replace("<|", "<").replace("|>", ">")


def render_document(blocks: list[Block], w: float, h: float, grounded: bool) -> str:
    parts = []
    for b in blocks:
        md = _safe(block_markdown(b))  # an image's content is its crop, linked by ocr_utils.to_markdown
        if grounded:
            parts.append(f"<|ref|>{b.label}<|/ref|>{_det([norm_box(b.bbox, w, h)])}\n{md}")
        elif md:
            parts.append(md)
    return "\n\n".join(parts) + ("\n" if parts else "")


def render_lines_grounded(blocks: list[Block], w: float, h: float) -> str:
    out = []
    for b in blocks:
        for row in _rows(b.lines):
            for ln in row:
                out.append(
                    f"<|ref|>{_safe(ln.text.strip())}<|/ref|>{_det([norm_box((ln.x0, ln.y0, ln.x1, ln.y1), w, h)])}"
                )
    return "\n".join(out) + ("\n" if out else "")


def render_free(blocks: list[Block]) -> str:
    return "\n\n".join("\n".join(block_rows_text(b)) for b in blocks if b.lines)


def locate(lines: list[Line], target: str, w: float, h: float) -> str:
    """Boxes of the text `target`: the matching part of each line that contains it (fuzzy as a fallback)."""
    want = " ".join(target.split()).lower()
    if not want:
        return ""
    boxes = []
    for ln in lines:
        text = ln.text.strip()
        low = text.lower()
        start = low.find(want)
        while start >= 0 and len(text):
            # Character-proportional sub-box inside the line box.
            x0 = ln.x0 + ln.w * start / len(text)
            x1 = ln.x0 + ln.w * (start + len(want)) / len(text)
            boxes.append(norm_box((x0, ln.y0, x1, ln.y1), w, h))
            start = low.find(want, start + len(want))
    if not boxes:
        boxes = [
            norm_box((ln.x0, ln.y0, ln.x1, ln.y1), w, h)
            for ln in lines
            if len(want) >= 3 and fuzz.partial_ratio(want, ln.text.lower()) >= 85
        ]
    if not boxes:
        return ""
    return f"<|ref|>{_safe(target)}<|/ref|>{_det(boxes)}"
