"""Batch OCR: mixed files, one bad file never fails the batch, ZIP bundle contents and safe names."""

from __future__ import annotations

import io
import json
import zipfile

import pymupdf
from conftest import BROKEN, DOCLING, OCR_TEST_TEXT, cer, page_text, render

from documents import unique_stems
from ocr_utils import safe_name


def files(*items):
    return [("files", (name, data)) for name, data in items]


def test_mixed_batch_with_a_bad_file(client, scan_png):
    r = client.post(
        "/batch/ocr",
        files=files(
            ("scan.png", scan_png),
            ("paper.pdf", (DOCLING / "single_page.pdf").read_bytes()),
            ("broken.jpg", (BROKEN / "truncated.jpg").read_bytes()),
            ("fake.pdf", (DOCLING / "corrupted.pdf").read_bytes()),
        ),
    )
    assert r.status_code == 200, r.text
    j = r.json()
    assert (j["total"], j["succeeded"], j["failed"]) == (4, 2, 2)
    scan, paper, broken, fake = j["results"]
    assert cer(scan["text"], OCR_TEST_TEXT) <= 0.1 and scan["kind"] == "image"
    assert paper["kind"] == "pdf" and cer(paper["text"], page_text("single_page.pdf")) <= 0.2
    assert broken["error"]["code"] == "corrupt_image" and broken["error"]["status"] == 422
    assert fake["error"]["code"] == "not_a_pdf"


def test_zip_bundle_contents_and_manifest(client):
    chart = render("picture_classification.pdf")
    r = client.post(
        "/batch/ocr/download",
        files=files(
            ("../../etc/chart.png", chart),
            ("chart.png", chart),
            ("multi.pdf", (DOCLING / "multi_page.pdf").read_bytes()),
            ("empty.png", b""),
        ),
    )
    assert r.status_code == 400  # an empty upload is refused before any work
    r = client.post(
        "/batch/ocr/download",
        files=files(
            ("../../etc/chart.png", chart),
            ("chart.png", chart),
            ("multi.pdf", (DOCLING / "multi_page.pdf").read_bytes()),
        ),
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(r.content))
    names = z.namelist()
    assert all(not n.startswith(("/", "..")) and ".." not in n.split("/") for n in names)
    for stem in ("chart", "chart_2", "multi"):
        for suffix in (".md", "_det.mmd", "_layouts.pdf"):
            assert f"{stem}/{stem}{suffix}" in names
    assert "chart/images/0.jpg" in names  # the figure, as linked from chart.md
    assert "![](images/0.jpg)" in z.read("chart/chart.md").decode()
    assert "<|det|>" in z.read("multi/multi_det.mmd").decode()
    layouts = pymupdf.open(stream=z.read("multi/multi_layouts.pdf"), filetype="pdf")
    assert layouts.page_count == 5
    manifest = json.loads(z.read("results.json"))["files"]
    assert [m["stem"] for m in manifest] == ["chart", "chart_2", "multi"]
    assert manifest[0]["filename"] == "../../etc/chart.png" and manifest[2]["pages_processed"] == 5


def test_simple_batch_and_limits(client, scan_png):
    r = client.post("/batch/ocr/simple", files=files(("a.png", scan_png), ("b.png", scan_png)))
    assert [x["success"] for x in r.json()["results"]] == [True, True]
    assert client.post("/batch/ocr").status_code == 422  # no files field at all
    settings = client.app.state.settings
    old = settings.max_batch_files
    settings.max_batch_files = 1
    try:
        r = client.post("/batch/ocr", files=files(("a.png", scan_png), ("b.png", scan_png)))
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files"
    finally:
        settings.max_batch_files = old
    assert client.get("/batch/status").json()["available"] is True


def test_safe_names():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\x\\scan 1.png") == "scan_1.png"
    assert safe_name("..") == "file"
    assert safe_name("résumé ünïcode.pdf") == "résumé_ünïcode.pdf"
    long = safe_name("a" * 500 + ".png")
    assert long.endswith(".png") and len(long) <= 90
    assert unique_stems(["a.png", "A.pdf", "a.png"]) == ["a", "A_2", "a_3"]
