"""Grounding parsing, Markdown and formula clean-up, drawing and crops."""

from __future__ import annotations

import io

from PIL import Image

import ocr_utils

DOC = (
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 90]]<|/det|>\n# Annual Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 120, 900, 300]]<|/det|>\nRevenue grew 12%.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 320, 500, 700]]<|/det|>\n\n"
    "<|ref|>equation<|/ref|><|det|>[[100, 720, 900, 760]]<|/det|>\n\\[E = mc^2 \\quad (1)\\]\n\n"
    "<|ref|>image<|/ref|><|det|>[[520, 320, 900, 700]]<|/det|>\n"
)


def test_parse_document_regions_with_content_and_pixels():
    regions = ocr_utils.parse_grounding(DOC, 2000, 1000)
    assert [r.label for r in regions] == ["title", "text", "image", "equation", "image"]
    assert regions[0].text == "# Annual Report"
    assert regions[1].box_norm == [100, 120, 900, 300]
    assert regions[1].box_px == [200, 120, 1802, 300]  # x scaled by 2000/999, y by 1000/999
    assert [r.image_index for r in regions] == [None, None, 0, None, 1]
    assert regions[4].crop_name == "images/1.jpg"


def test_ocr_grounding_lines_keep_their_text_as_label():
    raw = (
        "<|ref|>Hello world<|/ref|><|det|>[[10, 10, 200, 40]]<|/det|>\n"
        "<|ref|>second<|/ref|><|det|>[[10, 50, 90, 80]]<|/det|>"
    )
    regions = ocr_utils.parse_grounding(raw, 999, 999)
    assert [(r.label, r.text) for r in regions] == [("text", "Hello world"), ("text", "second")]
    assert ocr_utils.plain_text(raw) == "Hello world\nsecond"


def test_malformed_and_truncated_det_lists_are_tolerated():
    raw = (
        "<|ref|>text<|/ref|><|det|>[[900, 80, 100, 20], [5, 5, 5, 9], [-20, 10, 1500, 40]]<|/det|>\nA\n"
        "<|ref|>text<|/ref|><|det|>[[10, 10, 50"  # output cut off mid-box
    )
    regions = ocr_utils.parse_grounding(raw, 999, 999)
    # corners swapped -> fixed; zero-width box dropped; out-of-range clamped; incomplete box ignored
    assert [r.box_norm for r in regions] == [[100, 20, 900, 80], [0, 10, 999, 40]]


def test_repetition_loop_is_collapsed_and_duplicate_regions_dropped():
    loop = "<|ref|>text<|/ref|><|det|>[[1, 1, 50, 50]]<|/det|>\nsame\n" * 20
    regions = ocr_utils.parse_grounding(loop, 999, 999)
    assert len(regions) == 1
    text, changed = ocr_utils.collapse_repeats("a\nb\nb\nb\nb\nb\nc")
    assert changed and text == "a\nb\nb\nb\nc"


def test_markdown_links_images_in_order_and_cleans_formulas():
    md = ocr_utils.to_markdown(DOC)
    assert "<|" not in md
    assert md.index("![](images/0.jpg)") < md.index("![](images/1.jpg)")
    assert "\\[E = mc^2\\]" in md  # \quad (1) numbering removed
    assert ocr_utils.to_markdown(DOC, page=3).count("images/3_") == 2


def test_clean_formula_only_touches_display_math():
    assert ocr_utils.clean_formula(r"\[a+b \quad (2.1)\] and \quad (x)") == r"\[a+b\] and \quad (x)"


def test_split_references_matches_seed_contract():
    refs, images, others = ocr_utils.split_references(DOC)
    assert len(refs) == 5 and len(images) == 2 and len(others) == 3
    assert all(s.startswith("<|ref|>image") for s in images)


def test_draw_boxes_and_crops():
    img = Image.new("RGB", (400, 200), "white")
    regions = ocr_utils.parse_grounding(DOC, 400, 200)
    drawn = ocr_utils.draw_boxes(img, regions)
    assert drawn.size == img.size and drawn.getpixel((41, 15)) != (255, 255, 255)  # title box outline at x=40
    crops = ocr_utils.crop_regions(img, regions, {"image"})
    assert [c.size for _, c in crops] == [(160, 76), (152, 76)]  # 0-999 boxes scaled to 400x200
    png = ocr_utils.encode_image(drawn)
    assert Image.open(io.BytesIO(png)).size == (400, 200)
