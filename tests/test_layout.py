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
