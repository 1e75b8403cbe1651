"""Reading order and blocks from detected text lines and layout zones, and DeepSeek-style output per task.

Pure functions over `Line`s and `Zone`s (pixel boxes), so they are tested without any OCR model.
Lines inside a layout zone (from the layout model) form that zone's block; lines outside every zone are
grouped by a recursive XY-cut (columns at vertical gutters between prose, else bands at paragraph gaps).
Blocks are then read in XY-cut order of their boxes. Headings come from the zone label and line height.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
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
    bullet: bool = False  # a list bullet stands left of the line (the model does not read bullet glyphs)

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
class Zone:
    """A region found by the layout model, with its DeepSeek-OCR label."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    def holds(self, ln: Line) -> bool:
        cx = (ln.x0 + ln.x1) / 2
        return self.x0 <= cx <= self.x1 and self.y0 <= ln.cy <= self.y1


@dataclass
class Block:
    label: str  # a DeepSeek-OCR layout label: title | sub_title | text | table | image | image_caption | ...
    lines: list[Line] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # a zone's box (images, tables); else the lines' box
    html: str = ""  # a table's HTML, set by the engine's table model

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


# The layout model's classes (CDLA) as DeepSeek-OCR labels.
ZONE_LABELS = {
    "text": "text", "title": "title", "figure": "image", "figure_caption": "image_caption", "table": "table",
    "table_caption": "table_caption", "header": "header", "footer": "footer", "reference": "text",
    "equation": "equation",
}  # fmt: skip
_PRIORITY = {"table": 0, "image": 1}  # containers first: their lines belong to them


def _overlap(a: Zone, b: Zone) -> float:
    """Intersection over the smaller area."""
    iw = min(a.x1, b.x1) - max(a.x0, b.x0)
    ih = min(a.y1, b.y1) - max(a.y0, b.y0)
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / max(1.0, min(a.area, b.area))


def clean_zones(
    zones: list[Zone], lines: list[Line], page_w: float, page_h: float, body_h: float | None = None
) -> list[Zone]:
    """Zones worth keeping, containers first: duplicates dropped, and a 'picture' that is mostly lines of
    body-sized text (a tinted panel or page background) is no picture. Small print (chart labels, page
    thumbnails) leaves a picture a picture."""
    kept: list[Zone] = []
    for z in sorted(zones, key=lambda z: (_PRIORITY.get(z.label, 2), -z.score)):
        if z.label == "image":
            inside = [ln for ln in lines if z.holds(ln)]
            if body_h and inside and statistics.median(ln.h for ln in inside) < 0.7 * body_h:
                inside = []
            text_area = sum(ln.w * ln.h for ln in inside)
            if (z.area >= 0.3 * page_w * page_h and text_area >= 0.15 * z.area) or text_area >= 0.35 * z.area:
                continue
        if any(
            _overlap(z, k) > 0.7 and (k.label in _PRIORITY or k.label == z.label or z.label not in _PRIORITY)
            for k in kept
        ):
            continue
        kept.append(z)
    return kept


def _text_blocks(lines: list[Line], body_h: float, page_w: float) -> list[Block]:
    """Paragraph blocks from lines alone (no zone): XY-cut leaves, split where the line height changes."""
    blocks: list[Block] = []
    for leaf in xy_cut(lines, body_h, page_w):
        current: list[list[Line]] = []
        for row in _rows(leaf):
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


def _heading_label(block: Block, body_h: float) -> str:
    h = statistics.median(ln.h for ln in block.lines) if block.lines else body_h
    return "title" if h >= 1.6 * body_h else "sub_title"


def order_blocks(blocks: list[Block], body_h: float, page_w: float) -> list[Block]:
    """Blocks in reading order: XY-cut over their boxes (columns of substantial width, else bands)."""
    if len(blocks) <= 1:
        return blocks
    items = [Line(*b.bbox, text=str(i)) for i, b in enumerate(blocks)]

    def cut(group: list[Line]) -> list[Line]:
        if len(group) <= 1:
            return group
        cols = _split(group, "x", max(0.8 * body_h, 6.0))
        if len(cols) > 1 and sum(max(ln.x1 for ln in c) - min(ln.x0 for ln in c) >= 0.12 * page_w for c in cols) >= 2:
            return [ln for c in cols for ln in cut(c)]
        bands = _split(group, "y", 1.0)
        if len(bands) > 1:
            return [ln for b in bands for ln in cut(b)]
        return sorted(group, key=lambda ln: (ln.y0, ln.x0))

    return [blocks[int(ln.text)] for ln in cut(items)]


def build_blocks(lines: list[Line], page_w: float, page_h: float, zones: list[Zone] | None = None) -> list[Block]:
    """Blocks in reading order. Lines inside a layout zone form its block (tables and pictures hold theirs);
    the rest are grouped into paragraphs and headings by geometry."""
    lines = [ln for ln in lines if ln.text.strip() or ln.kind == "image"]
    figures = [ln for ln in lines if ln.kind == "image"]  # pictures found without a layout model
    lines = [ln for ln in lines if ln.kind == "text"]
    if not lines and not figures and not zones:
        return []
    body_h = statistics.median(ln.h for ln in lines) if lines else 0.02 * page_h
    zones = clean_zones(zones or [], lines, page_w, page_h, body_h)
    zones += [Zone("image", f.x0, f.y0, f.x1, f.y1) for f in figures]
    held: dict[int, list[Line]] = {i: [] for i in range(len(zones))}
    free: list[Line] = []
    blocks: list[Block] = []
    for ln in lines:
        home = next((i for i, z in enumerate(zones) if z.holds(ln)), None)
        if home is not None:
            held[home].append(ln)
        elif ln.h >= 2 * ln.w and len(ln.text.strip()) >= 4:  # a line printed sideways (a margin note)
            blocks.append(Block("text", [ln]))
        else:
            free.append(ln)
    for i, z in enumerate(zones):
        inside = held[i]
        if not inside and z.label not in ("image", "table"):
            continue
        label = z.label
        if label in ("header", "title") and inside:
            # the model calls a big first-page heading a header at times; running headers are small
            big = statistics.median(ln.h for ln in inside) >= 0.95 * body_h and len(_rows(inside)) <= 2
            label = _heading_label(Block(label, inside), body_h) if (label == "title" or big) else label
        if label == "text" and inside:
            # Geometry splits a text zone that holds several paragraphs or columns (a coarse zone).
            parts = _text_blocks(inside, body_h, page_w)
            if len(parts) > 1:
                blocks += parts
                continue
        box = (z.x0, z.y0, z.x1, z.y1)
        if inside:
            box = (
                min(z.x0, *(ln.x0 for ln in inside)),
                min(z.y0, *(ln.y0 for ln in inside)),
                max(z.x1, *(ln.x1 for ln in inside)),
                max(z.y1, *(ln.y1 for ln in inside)),
            )
        blocks.append(Block(label, inside, box=box))
    if free:
        blocks += _text_blocks(free, body_h, page_w)
    return _name_captions_and_title(order_blocks(blocks, body_h, page_w), body_h, page_h)


_MATH = re.compile(r"[=+<>≤≥∑∫√±×÷^]")
_PAGE_NUMBER = re.compile(r"^(?:page\s*)?\d{1,4}(?:\s*(?:/|of)\s*\d{1,4})?$", re.I)
_CAPTION = re.compile(r"^(?:(Table|Tab\.)|(Figure|Fig\.|Chart|Image))\s*[\dIVX]+", re.I)


def _name_captions_and_title(blocks: list[Block], body_h: float, page_h: float) -> list[Block]:
    """'Table 1. ...' next to a table is its caption ('Figure 2: ...' next to a picture likewise); a lone
    number in the top or bottom margin is a page number; a one-line 'heading' of math is an equation; a
    page's first heading, as tall as the others and before the text, is its title."""
    for b in blocks:
        one = " ".join(b.lines[0].text.split()) if len(b.lines) == 1 else ""
        if one and _PAGE_NUMBER.match(one) and (b.bbox[1] > 0.9 * page_h or b.bbox[3] < 0.1 * page_h):
            b.label = "page_number"
        elif one and b.label in ("title", "sub_title", "text") and _MATH.search(one):
            words = re.findall(r"[A-Za-z]{3,}", one)
            if (len(words) <= 1 and b.label != "text") or not words:
                b.label = "equation"
    for i, b in enumerate(blocks):
        m = _CAPTION.match(" ".join(b.lines[0].text.split())) if b.label == "text" and b.lines else None
        if m:
            near = {x.label for x in blocks[max(0, i - 1) : i + 2] if x is not b}
            if m.group(1) and "table" in near:
                b.label = "table_caption"
            elif m.group(2) and "image" in near:
                b.label = "image_caption"
    body = [b for b in blocks if b.label not in ("header", "footer", "page_number")]
    heads = [b for b in body if b.label in ("title", "sub_title") and b.lines]
    if heads and not any(b.label == "title" for b in heads):
        first = heads[0]
        tallest = max(statistics.median(ln.h for ln in b.lines) for b in heads)
        first_h = statistics.median(ln.h for ln in first.lines)
        if body.index(first) == 0 and first_h >= 0.75 * tallest and (first_h >= 1.15 * body_h or len(heads) > 1):
            first.label = "title"
    return blocks


def _make_block(rows: list[list[Line]], body_h: float) -> Block:
    lines = [ln for r in rows for ln in r]
    return Block(_label(statistics.median(ln.h for ln in lines), body_h, len(rows)), lines)


_HYPHEN_END = re.compile(r"[A-Za-z]-$")


_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")


def page_vocabulary(blocks: list[Block]) -> set[str]:
    """Every word of the page, lower case, to decide how a word broken at a line end is mended."""
    return {w.lower() for b in blocks for ln in b.lines for w in _WORD.findall(ln.text)}


def join_lines(texts: list[str], vocab: set[str] | None = None) -> str:
    """Lines of a paragraph as one string. 'exam-' + 'ple' becomes 'example' when the page uses 'example'
    elsewhere (or no vocabulary is given), else stays 'exam-ple' (a compound such as 'self-publishing')."""
    out = ""
    for t in texts:
        t = t.strip()
        if not out:
            out = t
        elif _HYPHEN_END.search(out) and t[:1].islower():
            head = out.rsplit(" ", 1)[-1][:-1]
            tail = _WORD.match(t)
            whole = (head + (tail.group(0) if tail else "")).lower()
            out = out[:-1] + t if vocab is None or whole in vocab else out + t
        else:
            out += " " + t
    return out


def block_rows_text(block: Block) -> list[str]:
    return [" ".join(ln.text.strip() for ln in row) for row in _rows(block.lines)]


_ITEM = re.compile(r"^(?:[•·▪●◦‣■□➢►*\-–]\s*|\(?(?:\d{1,2}|[a-z])[.)]\s+)")
_BULLET = re.compile(r"^[•·▪●◦‣■□➢►*\-–]\s*")


def _paragraphs(rows: list[list[Line]], vocab: set[str] | None = None) -> list[str]:
    """A block's rows as Markdown paragraphs; rows that start a list item stay list items."""
    texts = [" ".join(ln.text.strip() for ln in row) for row in rows]
    starts = [row[0].bullet or bool(_ITEM.match(t)) for row, t in zip(rows, texts, strict=True)]
    if not any(starts):
        return [join_lines(texts, vocab)]
    items: list[list[str]] = []
    for t, start, row in zip(texts, starts, rows, strict=True):
        if start or not items:
            items.append(["- " + t if row[0].bullet and not _BULLET.match(t) else t])
        else:
            items[-1].append(t)
    return [_BULLET.sub("- ", join_lines(it, vocab), count=1) for it in items]


def table_html(block: Block) -> str:
    """The table's HTML: the table model's, else one row per visual row and one cell per line."""
    if block.html:
        return block.html
    cells = ["".join(f"<td>{ln.text.strip()}</td>" for ln in row) for row in _rows(block.lines)]
    rows = "".join(f"<tr>{c}</tr>" for c in cells)
    return f"<table>{rows}</table>"


_TAG = re.compile(r"<[^>]+>")


def complete_table(html: str, lines: list[Line]) -> str:
    """The table model's HTML without page wrappers; a line it placed in no cell follows the table."""
    html = re.sub(r"</?(?:html|body)>", "", html).strip()
    cells = " ".join(_TAG.sub(" ", html).split())
    missing = [ln.text.strip() for ln in lines if " ".join(ln.text.split()) not in cells]
    return html + ("\n\n" + "\n".join(missing) if missing else "")


def block_markdown(block: Block, vocab: set[str] | None = None) -> str:
    """Markdown of a block. A picture writes the text read inside it (its link comes from the grounding)."""
    if block.label == "table":
        return table_html(block)
    if not block.lines:
        return ""
    rows = block_rows_text(block)
    if block.label in ("title", "sub_title"):
        return {"title": "# ", "sub_title": "## "}[block.label] + join_lines(rows, vocab)
    if block.label == "image":
        return "\n".join(rows)
    return "\n\n".join(_paragraphs(_rows(block.lines), vocab))


BoxMap = Callable[[tuple], tuple] | None  # boxes found on a turned page -> the page as sent


def norm_box(box: tuple[float, float, float, float], w: float, h: float, box_map: BoxMap = None) -> list[int]:
    """Pixel box -> DeepSeek's 0-999 coordinates (of the image as sent: `box_map` undoes a turn)."""
    x0, y0, x1, y1 = box_map(box) if box_map else box
    c = lambda v, s: max(0, min(999, round(v / s * 999)))  # noqa: E731
    return [c(x0, w), c(y0, h), c(x1, w), c(y1, h)]


def _det(boxes: list[list[int]]) -> str:
    return "<|det|>[" + ", ".join("[" + ", ".join(map(str, b)) + "]" for b in boxes) + "]<|/det|>"


def _safe(text: str) -> str:
    return text.replace("<|", "<").replace("|>", ">")


def render_document(blocks: list[Block], w: float, h: float, grounded: bool, box_map: BoxMap = None) -> str:
    parts = []
    vocab = page_vocabulary(blocks)
    for b in blocks:
        md = _safe(block_markdown(b, vocab))  # an image's content is its crop, linked by ocr_utils.to_markdown
        if grounded:
            parts.append(f"<|ref|>{b.label}<|/ref|>{_det([norm_box(b.bbox, w, h, box_map)])}\n{md}")
        elif md:
            parts.append(md)
    return "\n\n".join(parts) + ("\n" if parts else "")


def render_lines_grounded(blocks: list[Block], w: float, h: float, box_map: BoxMap = None) -> str:
    out = []
    for b in blocks:
        for row in _rows(b.lines):
            for ln in row:
                box = norm_box((ln.x0, ln.y0, ln.x1, ln.y1), w, h, box_map)
                out.append(f"<|ref|>{_safe(ln.text.strip())}<|/ref|>{_det([box])}")
    return "\n".join(out) + ("\n" if out else "")


def render_free(blocks: list[Block]) -> str:
    return "\n\n".join("\n".join(block_rows_text(b)) for b in blocks if b.lines)


def locate(lines: list[Line], target: str, w: float, h: float, box_map: BoxMap = None) -> str:
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
            boxes.append(norm_box((x0, ln.y0, x1, ln.y1), w, h, box_map))
            start = low.find(want, start + len(want))
    if not boxes:
        boxes = [
            norm_box((ln.x0, ln.y0, ln.x1, ln.y1), w, h, box_map)
            for ln in lines
            if len(want) >= 3 and fuzz.partial_ratio(want, ln.text.lower()) >= 85
        ]
    if not boxes:
        return ""
    return f"<|ref|>{_safe(target)}<|/ref|>{_det(boxes)}"
