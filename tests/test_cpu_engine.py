"""The CPU engine on real pages: words, layout labels, tables, pictures, rotation and unreadable scripts."""

from __future__ import annotations

import io
import re
from collections import Counter

import numpy as np
import pytest
from conftest import DOCLING, OCR_TEST_TEXT, cer, page_text, render
from PIL import Image

import ocr_utils


def word_f1(hyp: str, truth: str) -> float:
    """F1 of the bags of case-folded whitespace-separated words (bench/accuracy.py's figure)."""
    h, t = Counter(hyp.casefold().split()), Counter(truth.casefold().split())
    hit = sum((h & t).values())
    return 2 * hit / (sum(h.values()) + sum(t.values()))


def markdown_words(md: str) -> str:
    md = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", md)
    md = re.sub(r"<[^>]+>", " ", md)
    return re.sub(r"(?m)^\s*(?:#{1,6}|-)\s+", "", md)


def post(client, png: bytes, prompt: str) -> dict:
    r = client.post("/ocr/image/advanced", files={"file": ("page.png", png)}, data={"prompt": prompt})
    assert r.status_code == 200, r.text
    return r.json()


def png_of(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("pdf,page", [("2305.03393v1-pg9.pdf", 0), ("multi_page.pdf", 2), ("headings_and_text.pdf", 0)])
def test_free_text_words_match_the_text_layer(client, pdf, page):
    text = post(client, render(pdf, page), "free")["text"]
    assert word_f1(text, page_text(pdf, page)) >= 0.97


def test_no_merged_or_split_words_on_the_paper_page(client, pg9_png):
    words = set(post(client, pg9_png, "free")["text"].split())
    for w in ["Hyper", "Parameter", "Optimization", "separately", "complex", "representation", "TableFormer"]:
        assert w in words, w


def test_paper_page_labels_headings_and_table_cells(client, pg9_png):
    out = post(client, pg9_png, "document")
    labels = [r["label"] for r in out["regions"]]
    assert "table" in labels and "sub_title" in labels and "table_caption" in labels
    assert "image" not in labels  # a table is no picture
    md = out["markdown"]
    assert "## 5.1 Hyper Parameter Optimization" in md and "## 5.2 Quantitative Results" in md
    table = next(r["text"] for r in out["regions"] if r["label"] == "table")
    assert table.startswith("<table>") and "</table>" in table
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table)
    for cell in ["# enc-layers", "Language", "TEDs", "simple", "complex", "0.965", "2.73", "5.39"]:
        assert cell in cells, cell
    # The ground-truth Markdown's table cells, each read into some cell of ours.
    gt = (DOCLING / "2305.03393v1-pg9.groundtruth.md").read_text()
    gt_cells = {c.strip() for line in gt.splitlines() if line.startswith("|") for c in line.strip("|").split("|")}
    gt_tokens = {t for c in gt_cells for t in c.split() if t not in {"-", "#"}}
    ours = {t for c in cells for t in c.split()}
    assert len(gt_tokens & ours) >= 0.95 * len(gt_tokens)


def test_no_recognised_word_is_lost_between_free_and_document(client):
    for pdf, page in [("2305.03393v1-pg9.pdf", 0), ("picture_classification.pdf", 0), ("multi_page.pdf", 0)]:
        png = render(pdf, page)
        free = post(client, png, "free")["text"]
        doc = markdown_words(post(client, png, "document")["markdown"])
        # Characters, not words: the Markdown joins 'exam-' + 'ple' across a line break.
        lost = Counter(c for c in free.casefold() if c.isalnum()) - Counter(c for c in doc.casefold() if c.isalnum())
        assert not lost, (pdf, lost)


def test_picture_is_an_image_region_and_keeps_its_text(client):
    out = post(client, render("picture_classification.pdf"), "document")
    images = [r for r in out["regions"] if r["label"] == "image"]
    assert len(images) == 1
    x0, y0, x1, y1 = images[0]["box_norm"]
    assert (x1 - x0) * (y1 - y0) < 0.4 * 999 * 999  # the chart, not the page
    assert "woodlot" in images[0]["text"].lower()  # the chart's labels are read, not dropped
    assert "![](images/0.jpg)" in out["markdown"]
    captions = [r for r in out["regions"] if r["label"] == "image_caption"]
    assert captions and captions[0]["text"].startswith("Figure 1")


def test_tinted_page_is_read_as_text_not_a_picture(client):
    page = np.asarray(Image.open(io.BytesIO(render("multi_page.pdf", 0))).convert("RGB")).astype(float)
    tint = np.array([255, 236, 200]) / 255  # a cream background, text stays dark
    out = post(client, png_of((page * tint).astype(np.uint8)), "document")
    assert not [r for r in out["regions"] if r["label"] == "image"]
    assert "![](" not in out["markdown"]
    assert word_f1(markdown_words(out["markdown"]), page_text("multi_page.pdf", 0)) >= 0.95


def test_list_items_stay_apart(client):
    md = post(client, render("multi_page.pdf", 3), "document")["markdown"]
    assert re.search(r"(?m)^- Accessibility:", md) and re.search(r"(?m)^- Education:", md)
    assert re.search(r"(?m)^2\. Integration with Other Tools", md)


def test_rotated_scan_is_turned_before_reading(client):
    png = render("ocr_test_rotated_90.pdf")
    out = post(client, png, "ocr")
    assert cer(ocr_utils.plain_text(out["raw_output"]), OCR_TEST_TEXT) < 0.05
    assert any("turned" in w for w in out["warnings"])
    # Boxes answer in the image as sent: the page is on its side, so each line's box stands tall.
    w, h = Image.open(io.BytesIO(png)).size
    assert w > h and out["regions"]
    for r in out["regions"]:
        x0, y0, x1, y1 = r["box_px"]
        assert y1 - y0 > x1 - x0 and x1 <= w and y1 <= h


def test_upside_down_page_is_turned_and_upright_pages_are_not(client, scan_png):
    upright = post(client, scan_png, "free")
    assert cer(upright["text"], OCR_TEST_TEXT) == 0.0 and upright["warnings"] == []
    flipped = np.rot90(np.asarray(Image.open(io.BytesIO(render("multi_page.pdf", 1))).convert("RGB")), 2)
    out = post(client, png_of(np.ascontiguousarray(flipped)), "free")
    assert any("180°" in w for w in out["warnings"])
    assert word_f1(out["text"], page_text("multi_page.pdf", 1)) >= 0.95


@pytest.mark.parametrize("pdf,script", [("right_to_left_01.pdf", "Arabic"), ("normal_4pages.pdf", "Korean")])
def test_unreadable_script_is_named_in_a_warning(client, pdf, script):
    r = client.post("/ocr/image/simple", files={"file": ("page.png", render(pdf))})
    assert r.status_code == 200
    warnings = r.json()["warnings"]
    assert len(warnings) == 1 and script in warnings[0]


def test_readable_pages_get_no_warning(client, pg9_png):
    assert post(client, pg9_png, "document")["warnings"] == []
    assert post(client, render("picture_classification.pdf"), "free")["warnings"] == []
