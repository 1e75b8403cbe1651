"""Output utilities shared by every router: grounding parsing, Markdown and formula clean-up, box drawing,
region crops, and base64/PNG helpers.

Grounded model output looks like `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` followed by
the region's content; coordinates are 0-999 of the image. Parsing is tolerant: truncated `<|det|>` lists,
swapped corners, out-of-range numbers and repetition loops do not break it.
"""

from __future__ import annotations

import base64
import io
import re
import unicodedata
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw, ImageFont

# DeepSeek-OCR's layout categories; any other ref label is the recognised text itself (OCR-grounding mode).
LAYOUT_LABELS = {
    "title", "sub_title", "text", "image", "image_caption", "table", "table_caption", "table_footnote",
    "equation", "formula", "figure", "figure_caption", "header", "footer", "page_number", "list", "code",
    "reference", "footnote", "abstract", "author", "caption",
}  # fmt: skip

_REF_RE = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>\s*<\|det\|>(.*?)(?:<\|/det\|>|(?=<\|ref\|>)|\Z)", re.S)
_BOX_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)")
_SPECIAL_RE = re.compile(r"<\|/?(?:ref|det|grounding)\|>")
_EOS_RE = re.compile(r"<｜end▁of▁sentence｜>|<\|end_of_sentence\|>")


@dataclass
class Region:
    index: int
    label: str  # layout category ("text" for OCR-grounding lines)
    text: str  # the region's content (or the recognised line)
    box_norm: list[int]  # [x1, y1, x2, y2], 0-999
    box_px: list[int]  # same box in pixels of the original image
    raw: str  # the <|ref|>..<|/det|> span as the model wrote it
    image_index: int | None = None  # k-th image region: its crop is images/{k}.jpg, as linked in the Markdown

    @property
    def crop_name(self) -> str:
        return f"images/{self.image_index}.jpg" if self.image_index is not None else f"regions/{self.index}.jpg"

    def as_dict(self) -> dict:
        return asdict(self)


def parse_boxes(det: str) -> list[list[int]]:
    """All complete [x1,y1,x2,y2] boxes in a det payload, clamped to 0-999 and ordered; degenerate ones dropped."""
    boxes = []
    for m in _BOX_RE.finditer(det):
        x1, y1, x2, y2 = (max(0, min(999, round(float(v)))) for v in m.groups())
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        if x2 > x1 and y2 > y1:
            boxes.append([x1, y1, x2, y2])
    return boxes


def to_pixels(box: list[int], width: int, height: int) -> list[int]:
    return [
        round(box[0] / 999 * width),
        round(box[1] / 999 * height),
        round(box[2] / 999 * width),
        round(box[3] / 999 * height),
    ]


def parse_grounding(raw: str, width: int, height: int) -> list[Region]:
    """Regions of grounded output, one per box; each keeps the content written after its det span."""
    raw = _EOS_RE.sub("", raw)
    matches = list(_REF_RE.finditer(raw))
    regions: list[Region] = []
    seen: set[tuple] = set()
    for i, m in enumerate(matches):
        label = m.group(1).strip()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        content = _SPECIAL_RE.sub("", raw[m.end() : end]).strip()
        if label.lower() in LAYOUT_LABELS:
            category, text = label.lower(), content
        else:
            category, text = "text", (label + ("\n" + content if content else "")).strip()
        for box in parse_boxes(m.group(2)):
            key = (category, text, tuple(box))
            if key in seen:  # repetition loops re-emit the same region
                continue
            seen.add(key)
            image_index = sum(r.image_index is not None for r in regions) if category == "image" else None
            regions.append(
                Region(len(regions), category, text, box, to_pixels(box, width, height), m.group(0), image_index)
            )
    return regions


def split_references(raw: str) -> tuple[list[str], list[str], list[str]]:
    """Seed-000 fields: all ref/det spans, the image ones, the others."""
    spans = [m.group(0) for m in _REF_RE.finditer(raw)]
    images = [s for s in spans if "<|ref|>image<|/ref|>" in s]
    return spans, images, [s for s in spans if s not in images]


def collapse_repeats(text: str, max_repeats: int = 3) -> tuple[str, bool]:
    """Drop runs of identical lines beyond max_repeats (the model's repetition loops). Returns (text, changed)."""
    out: list[str] = []
    run = 0
    changed = False
    for line in text.split("\n"):
        if out and line.strip() and line == out[-1]:
            run += 1
            if run >= max_repeats:
                changed = True
                continue
        else:
            run = 0
        out.append(line)
    return "\n".join(out), changed


def clean_formula(text: str) -> str:
    r"""Remove equation numbering `\quad (1)` inside `\[...\]` display formulas, as the official scripts do."""

    def fix(m: re.Match) -> str:
        body = re.sub(r"\\quad\s*\([^)]*\)", "", m.group(1)).strip()
        return r"\[" + body + r"\]"

    return re.sub(r"\\\[(.*?)\\\]", fix, text, flags=re.S)


def to_markdown(raw: str, image_link: str = "images/{index}.jpg", page: int | None = None) -> str:
    """Clean Markdown from raw output: image regions become links to their crops, other grounding removed."""
    raw = _EOS_RE.sub("", raw)
    counter = iter(range(10**9))

    def replace(m: re.Match) -> str:
        if m.group(1).strip().lower() != "image":
            return ""
        links = []
        for _ in parse_boxes(m.group(2)):  # one link per box, numbered like Region.image_index
            idx = next(counter)
            links.append(f"![]({image_link.format(index=idx if page is None else f'{page}_{idx}')})\n")
        return "".join(links)

    md = _REF_RE.sub(replace, raw)
    md = _SPECIAL_RE.sub("", md)
    md = md.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")
    md = clean_formula(md)
    md, _ = collapse_repeats(md)
    # Drop the content line that followed an image ref (DeepSeek writes none; engines may write blanks).
    md = re.sub(r"\n{3,}", "\n\n", md)
    return md.strip() + ("\n" if md.strip() else "")


def plain_text(raw: str) -> str:
    """Text only: grounding spans of layout regions removed, OCR-grounding labels kept as text."""
    raw = _EOS_RE.sub("", raw)

    def keep(m: re.Match) -> str:
        label = m.group(1).strip()
        return "" if label.lower() in LAYOUT_LABELS else label

    text = _REF_RE.sub(keep, raw)
    text = _SPECIAL_RE.sub("", text)
    text, _ = collapse_repeats(text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_PALETTE = {
    "title": (220, 38, 38), "sub_title": (234, 88, 12), "text": (37, 99, 235), "image": (22, 163, 74),
    "table": (147, 51, 234), "equation": (202, 138, 4),
}  # fmt: skip


def draw_boxes(image: Image.Image, regions: list[Region]) -> Image.Image:
    """A copy of the image with each region's box and label drawn, translucent fill behind."""
    base = image.convert("RGB")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    size = max(12, round(min(base.size) / 70))
    font = ImageFont.load_default(size=size)
    width = max(2, round(min(base.size) / 400))
    for r in regions:
        color = _PALETTE.get(r.label, (100, 116, 139))
        x0, y0, x1, y1 = r.box_px
        draw.rectangle((x0, y0, x1, y1), outline=(*color, 255), width=width, fill=(*color, 40))
        tag = f"{r.index}:{r.label}"
        ty = max(0, y0 - size - 4)
        tb = draw.textbbox((x0, ty), tag, font=font)
        draw.rectangle((tb[0] - 2, tb[1] - 2, tb[2] + 2, tb[3] + 2), fill=(*color, 220))
        draw.text((x0, ty), tag, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")


def crop_regions(
    image: Image.Image, regions: list[Region], labels: set[str] | None = None
) -> list[tuple[Region, Image.Image]]:
    """(region, crop) for regions whose label is in `labels` (all regions when None)."""
    out = []
    for r in regions:
        if labels is not None and r.label not in labels:
            continue
        x0, y0, x1, y1 = r.box_px
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            out.append((r, image.crop((x0, y0, x1, y1))))
    return out


def encode_image(image: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.convert("RGB").save(buf, "JPEG", quality=quality)
    else:
        image.save(buf, fmt.upper())
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def strip_special_tokens(raw: str) -> str:
    """What vLLM's skip_special_tokens=True leaves of DeepSeek-OCR output: no grounding or end tokens."""
    return _SPECIAL_RE.sub("", _EOS_RE.sub("", raw))


def safe_name(name: str | None, default: str = "file") -> str:
    """A file name that is safe as one path component: no folders, no '..', printable, bounded length."""
    name = unicodedata.normalize("NFKC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.\-]+", "_", name, flags=re.UNICODE).strip("._") or default
    stem, dot, ext = name.rpartition(".")
    if dot and len(ext) <= 8:
        return stem[:80].strip("._") + "." + ext if stem.strip("._") else default + "." + ext
    return name[:90]
