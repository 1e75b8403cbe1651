"""PDF OCR through the real app: per-page results, page ranges, layouts PDF, crops, and every bad PDF."""

from __future__ import annotations

import base64

import pymupdf
import pytest
from conftest import DOCLING, cer, page_text

from documents import PAGE_SPLIT
from process.pdf_process import parse_pages

# A PDF whose page tree is empty: opens, but has no pages.
ZERO_PAGE_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def pdf_post(client, name: str, route: str = "/pdf/ocr", data: bytes | None = None, **form):
    payload = data if data is not None else (DOCLING / name).read_bytes()
    return client.post(route, files={"file": (name, payload, "application/pdf")}, data=form)


def test_multi_page_pdf_pages_and_accuracy(client):
    r = pdf_post(client, "multi_page.pdf", pages="1-3")
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["page_count"] == 5 and j["pages_processed"] == 3
    assert [p["page"] for p in j["pages"]] == [1, 2, 3]
    for p in j["pages"]:
        assert cer(p["text"], page_text("multi_page.pdf", p["page"] - 1)) <= 0.15
        assert p["dpi"] == 144 and p["regions"]
    assert j["markdown"].count(PAGE_SPLIT.strip()) == 2
    assert j["usage"]["output_tokens"] > 0


def test_page_selection_and_layouts_pdf(client):
    r = pdf_post(client, "multi_page.pdf", pages="2,4-", draw_layouts="true", dpi="100")
    j = r.json()
    assert [p["page"] for p in j["pages"]] == [2, 4, 5]
    layouts = pymupdf.open(stream=base64.b64decode(j["layouts_pdf"]), filetype="pdf")
    assert layouts.page_count == 3
    # Each layout page is the rendered page (100 dpi) with its boxes drawn.
    w, h = j["pages"][0]["image_size"]
    assert abs(layouts[0].rect.width / layouts[0].rect.height - w / h) < 0.01


def test_figures_are_extracted_and_linked(client):
    j = pdf_post(client, "picture_classification.pdf", pages="1").json()
    names = [im["name"] for im in j["images"]]
    assert names and all(n.startswith("images/1_") for n in names)
    for n in names:
        assert f"![]({n})" in j["markdown"]


def test_password_protected_pdf(client):
    r = pdf_post(client, "2206.01062_pg3.pdf")
    assert r.status_code == 422 and r.json()["error"]["code"] == "pdf_encrypted"
    r = pdf_post(client, "2206.01062_pg3.pdf", password="wrong")
    assert r.status_code == 422 and r.json()["error"]["code"] == "pdf_wrong_password"
    r = pdf_post(client, "2206.01062_pg3.pdf", route="/pdf/ocr/simple", password="1234")
    assert r.status_code == 200 and len(r.json()["text"]) > 500


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("corrupted.pdf", None, 415, "not_a_pdf"),
        ("empty.pdf", b"", 400, "empty_file"),
        ("zero.pdf", ZERO_PAGE_PDF, 422, "empty_pdf"),
        ("truncated.pdf", (DOCLING / "multi_page.pdf").read_bytes()[:3000], 422, None),  # repaired to 0 pages
        ("image.pdf", (DOCLING / "example_image_01.png").read_bytes(), 415, "not_a_pdf"),
    ],
)
def test_bad_pdfs_are_clear_4xx(client, name, data, status, code):
    r = pdf_post(client, name, data=data) if data is not None else pdf_post(client, name)
    assert r.status_code == status, r.text
    if code:
        assert r.json()["error"]["code"] == code
    else:
        assert r.json()["error"]["code"] in ("empty_pdf", "corrupt_pdf")


def test_blank_page_is_an_empty_result(client):
    r = pdf_post(client, "empty_page.pdf")
    assert r.status_code == 200
    assert r.json()["pages"][0]["text"] == "" and r.json()["pages"][0]["regions"] == []


def test_bad_parameters(client):
    assert pdf_post(client, "single_page.pdf", pages="3-1").json()["error"]["code"] == "bad_pages"
    assert pdf_post(client, "single_page.pdf", pages="9").json()["error"]["code"] == "bad_pages"
    assert pdf_post(client, "single_page.pdf", dpi="20").status_code == 422
    assert client.post("/pdf/ocr").json()["error"]["code"] == "need_one_pdf"
    assert pdf_post(client, "single_page.pdf", prompt="describe").json()["error"]["code"] == "prompt_not_supported"


def test_page_limit(client):
    settings = client.app.state.settings
    old = settings.max_pdf_pages
    settings.max_pdf_pages = 2
    try:
        r = pdf_post(client, "multi_page.pdf")
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pages"
        assert pdf_post(client, "multi_page.pdf", route="/pdf/ocr/simple", pages="1-2").status_code == 200
    finally:
        settings.max_pdf_pages = old


def test_simple_route_right_to_left_and_status(client):
    r = pdf_post(client, "right_to_left_01.pdf", route="/pdf/ocr/simple")
    assert r.status_code == 200 and r.json()["pages"] == 1  # read, though the CPU model knows no Arabic
    assert client.get("/pdf/status").json()["available"] is True
    assert "POST /pdf/ocr" in client.get("/pdf/info").json()["endpoints"]


def test_sagemaker_pdf_invocation(client):
    b64 = base64.b64encode((DOCLING / "multi_page.pdf").read_bytes()).decode()
    r = client.post("/invocations", json={"prompt": "<image>\\nFree OCR.", "pdf_base64": b64})
    assert r.status_code == 200
    j = r.json()
    assert j["pages"] == 5
    assert cer(j["text"], "\n".join(page_text("multi_page.pdf", i) for i in range(5))) <= 0.15


def test_parse_pages():
    assert parse_pages(None, 4) == [0, 1, 2, 3]
    assert parse_pages("1-2, 4", 4) == [0, 1, 3]
    assert parse_pages("3-", 4) == [2, 3]
    assert parse_pages("2,2,1-2", 4) == [1, 0]
