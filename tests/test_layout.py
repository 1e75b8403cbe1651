"""Reading order, blocks and DeepSeek-style rendering of the CPU engine, on hand-made line layouts."""

from __future__ import annotations

import ocr_utils
from engines import layout
from engines.layout import Line


def two_columns() -> list[Line]:
    lines = [Line(100, 50, 1100, 110, "A Two Column Title")]
    for i in range(6):  # same baselines in both columns: rows align, reading must not interleave
        y = 200 + i * 40
        lines.append(Line(600, y, 1100, y + 30, f"right {i}"))
        lines.append(Line(100, y, 560, y + 30, f"left {i}"))
    return lines


def test_two_columns_read_column_by_column():
    blocks = layout.build_blocks(two_columns(), 1200, 1600)
    assert blocks[0].label == "title"
    free = layout.render_free(blocks)
    order = [ln for ln in free.split("\n") if ln.strip()]
    assert order == ["A Two Column Title"] + [f"left {i}" for i in range(6)] + [f"right {i}" for i in range(6)]


def test_form_like_rows_read_row_by_row():
    # Narrow key/value columns are not prose columns: keep rows together.
    lines = []
    for i, (k, v) in enumerate([("Name:", "Ada"), ("Date:", "1843"), ("City:", "London")]):
        y = 100 + i * 40
        lines += [Line(100, y, 180, y + 30, k), Line(400, y, 480, y + 30, v)]
    text = layout.render_free(layout.build_blocks(lines, 1200, 1600))
    assert text.split("\n") == ["Name: Ada", "Date: 1843", "City: London"]


def test_paragraph_gap_splits_blocks_and_hyphens_join():
    lines = [
        Line(100, 100, 900, 130, "The exam-"),
        Line(100, 135, 900, 165, "ple continues."),
        Line(100, 260, 900, 290, "New paragraph."),
    ]
    blocks = layout.build_blocks(lines, 1000, 1000)
    assert [layout.block_markdown(b) for b in blocks] == ["The example continues.", "New paragraph."]


def test_grounded_document_round_trips_through_the_parser():
    raw = layout.render_document(layout.build_blocks(two_columns(), 1200, 1600), 1200, 1600, grounded=True)
    regions = ocr_utils.parse_grounding(raw, 1200, 1600)
    assert regions[0].label == "title" and regions[0].text == "# A Two Column Title"
    left = regions[1]
    assert left.box_px[0] <= 100 + 2 and left.box_px[2] <= 562  # left column's box stays left of the gutter


def test_locate_returns_subbox_of_the_match():
    lines = [Line(0, 0, 1000, 40, "Total Amount: 42"), Line(0, 100, 1000, 140, "nothing here")]
    raw = layout.locate(lines, "amount", 1000, 1000)
    regions = ocr_utils.parse_grounding(raw, 1000, 1000)
    assert len(regions) == 1
    x0, _, x1, _ = regions[0].box_px
    assert 340 <= x0 <= 400 and 700 <= x1 <= 760  # "Amount" is characters 6..12 of 16
    assert layout.locate(lines, "absent words", 1000, 1000) == ""


def paper_page() -> tuple[list[Line], list[layout.Zone]]:
    """A heading, a paragraph, a table caption and a table as lines, with the zones a layout model gives."""
    lines = [
        Line(100, 100, 500, 130, "2 Methods"),
        Line(100, 150, 900, 170, "We measure every page twice and keep"),
        Line(100, 175, 600, 195, "the better reading."),
        Line(100, 230, 700, 250, "Table 1. Results per page"),
        Line(100, 270, 200, 290, "page"),
        Line(400, 270, 500, 290, "score"),
        Line(100, 300, 200, 320, "one"),
        Line(400, 300, 500, 320, "0.91"),
    ]
    zones = [
        layout.Zone("sub_title", 95, 95, 505, 135, 0.9),
        layout.Zone("text", 95, 145, 905, 200, 0.95),
        layout.Zone("table", 90, 262, 520, 328, 0.96),
        layout.Zone("image", 380, 295, 510, 325, 0.6),  # a picture inside the table: the table keeps its cells
    ]
    return lines, zones


def test_zones_give_deepseek_labels_in_reading_order():
    lines, zones = paper_page()
    blocks = layout.build_blocks(lines, 1000, 1000, zones)
    assert [b.label for b in blocks] == ["title", "text", "table_caption", "table"]
    md = layout.render_document(blocks, 1000, 1000, grounded=False)
    assert md.startswith("# 2 Methods\n\nWe measure every page twice and keep the better reading.")
    assert "<table><tr><td>page</td><td>score</td></tr><tr><td>one</td><td>0.91</td></tr></table>" in md


def test_tinted_background_is_no_picture_and_a_picture_keeps_its_text():
    lines = [Line(100, 100 + 40 * i, 900, 130 + 40 * i, f"line {i} of the page") for i in range(10)]
    background = layout.Zone("image", 0, 0, 1000, 1000, 0.8)  # the whole tinted page called a picture
    blocks = layout.build_blocks(lines, 1000, 1000, [background])
    assert "image" not in [b.label for b in blocks]
    chart = [Line(600, 700, 640, 715, "2024"), Line(700, 700, 740, 715, "2025")]
    blocks = layout.build_blocks(lines + chart, 1000, 1000, [layout.Zone("image", 550, 560, 950, 720, 0.9)])
    pictures = [b for b in blocks if b.label == "image"]
    assert len(pictures) == 1 and layout.block_markdown(pictures[0]) == "2024 2025"
    raw = layout.render_document(blocks, 1000, 1000, grounded=True)
    assert "![](images/0.jpg)\n\n2024 2025" in ocr_utils.to_markdown(raw)


def test_table_model_html_is_completed_with_lines_it_missed():
    lines = [Line(0, 0, 10, 10, "a"), Line(20, 0, 30, 10, "b"), Line(0, 20, 30, 30, "note below")]
    html = layout.complete_table("<html><body><table><tr><td>a</td><td>b</td></tr></table></body></html>", lines)
    assert html == "<table><tr><td>a</td><td>b</td></tr></table>\n\nnote below"


def test_list_items_and_hyphen_joins():
    bullet = [
        Line(140, 100, 900, 120, "First item that wraps onto a", bullet=True),
        Line(140, 125, 600, 145, "second line."),
        Line(140, 150, 900, 170, "Second item.", bullet=True),
    ]
    blocks = layout.build_blocks(bullet, 1000, 1000)
    assert layout.block_markdown(blocks[0]) == "- First item that wraps onto a second line.\n\n- Second item."
    numbered = [Line(100, 100, 900, 120, "1. Read the page"), Line(100, 125, 900, 145, "2. Write it down")]
    assert layout.block_markdown(layout.build_blocks(numbered, 1000, 1000)[0]) == "1. Read the page\n\n2. Write it down"
    # A word broken at a line end is mended only into a word the page uses; a compound keeps its hyphen.
    vocab = {"example"}
    assert layout.join_lines(["an exam-", "ple of self-", "publishing"], vocab) == "an example of self-publishing"


def test_boxes_found_on_a_turned_page_map_back_to_the_page_as_sent():
    from engines.cpu_orientation import box_mapper

    # A 200 x 100 image (w x h); np.rot90(k=1) gives 100 x 200. A box near the turned page's top-left corner
    # lies near the sent image's top-right corner.
    assert box_mapper(1, 100, 200)((0, 0, 10, 20)) == (180, 0, 200, 10)
    assert box_mapper(2, 200, 100)((0, 0, 10, 20)) == (190, 80, 200, 100)
    assert box_mapper(3, 100, 200)((0, 0, 10, 20)) == (0, 90, 20, 100)
    assert box_mapper(0, 100, 200) is None
