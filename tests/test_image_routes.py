"""Every image route through the real app and the CPU engine, on real documents."""

from __future__ import annotations

import base64
import io
import re

import pymupdf
import pytest
from conftest import DOCLING, OCR_TEST_TEXT, cer, norm, page_text, render
from PIL import Image

# Character error rate the CPU engine must stay under (measured: see README "Accuracy").
MAX_CER_SCAN = 0.10
MAX_CER_BORN_DIGITAL = 0.15


def advanced(client, png: bytes, **data):
    r = client.post("/ocr/image/advanced", files={"file": ("page.png", png, "image/png")}, data=data)
    assert r.status_code == 200, r.text
    return r.json()


def test_root_health_ready_and_status(client):
    root = client.get("/").json()
    assert root["engine"]["engine"] == "cpu" and root["engine"]["ready"] is True
    assert root["routers"]["ocr"]["available"] is True
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    ping = client.get("/ping")
    assert ping.status_code == 200 and ping.json()["status"] == "healthy"
    st = client.get("/ocr/status").json()
    assert st["available"] and st["engine"]["engine"] == "cpu"
    info = client.get("/ocr/info").json()
    assert "gundam" in info["modes"] and "document" in info["prompts"]
    assert client.get("/docs").status_code == 200
    assert "/ocr/image/advanced" in client.get("/openapi.json").json()["paths"]


def test_scanned_page_text_and_boxes(client, scan_png):
    j = advanced(client, scan_png, prompt="document")
    assert cer(j["text"], OCR_TEST_TEXT) <= MAX_CER_SCAN, j["text"]
    assert j["has_bounding_boxes"] and j["regions"]
    # The text sits in the top quarter of the page: every box must be there too.
    w, h = j["image_size"]
    for r in j["regions"]:
        x0, y0, x1, y1 = r["box_px"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h / 4
    assert j["raw_output"].startswith("<|ref|>") and j["references"]
    assert j["prompt_used"] == "<image>\n<|grounding|>Convert the document to markdown."
    assert j["usage"]["prompt_tokens"] > 0 and j["usage"]["finish_reason"] == "stop"


def test_born_digital_page_accuracy_and_boxes_on_words(client, pg9_png):
    j = advanced(client, pg9_png, prompt="document")
    truth = page_text("2305.03393v1-pg9.pdf")
    # The table comes as HTML, as DeepSeek-OCR writes it: compare its cell text, not its tags.
    assert cer(re.sub(r"<[^>]+>", " ", j["text"]), truth) <= MAX_CER_BORN_DIGITAL
    # Boxes lie on the words: nearly every word of the text layer is inside some text region box.
    page = pymupdf.open(DOCLING / "2305.03393v1-pg9.pdf")[0]
    scale = 144 / 72
    boxes = [r["box_px"] for r in j["regions"]]
    words = page.get_text("words")
    inside = 0
    for x0, y0, x1, y1, *_ in words:
        cx, cy = (x0 + x1) / 2 * scale, (y0 + y1) / 2 * scale
        inside += any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes)
    assert inside / len(words) >= 0.95
    # ... and no text box is empty of words.
    for r in j["regions"]:
        if r["label"] == "image":
            continue
        b = r["box_px"]
        assert any(
            b[0] <= (w[0] + w[2]) * scale / 2 <= b[2] and b[1] <= (w[1] + w[3]) * scale / 2 <= b[3] for w in words
        )


def test_annotated_image_and_figure_crops(client):
    png = render("picture_classification.pdf")
    j = advanced(client, png, prompt="document", draw_boxes="true", crop_regions="true")
    annotated = Image.open(io.BytesIO(base64.b64decode(j["annotated_image"])))
    original = Image.open(io.BytesIO(png))
    assert annotated.size == original.size
    assert annotated.convert("RGB").tobytes() != original.convert("RGB").tobytes()
    images = [r for r in j["regions"] if r["label"] == "image"]
    assert images, "the page's chart should be found as an image region"
    assert [c["name"] for c in j["crops"]] == [f"images/{i}.jpg" for i in range(len(images))]
    assert "![](images/0.jpg)" in j["markdown"]
    crop = Image.open(io.BytesIO(base64.b64decode(j["crops"][0]["image_base64"])))
    x0, y0, x1, y1 = images[0]["box_px"]
    assert crop.size == (x1 - x0, y1 - y0)


def test_every_region_crops_on_request_and_draw_off(client, scan_png):
    j = advanced(client, scan_png, prompt="ocr", draw_boxes="false", crop_labels="all")
    assert j["annotated_image"] is None
    assert len(j["crops"]) == len(j["regions"]) >= 3  # one per text line
    assert all(r["text"] for r in j["regions"])


def test_free_ocr_markdown_and_locate(client, scan_png):
    free = advanced(client, scan_png, prompt="<image>\nFree OCR.")
    assert "<|" not in free["raw_output"] and not free["regions"]
    assert cer(free["text"], OCR_TEST_TEXT) <= MAX_CER_SCAN
    md = advanced(client, scan_png, prompt="markdown")
    assert "<|" not in md["raw_output"] and "Docling" in md["markdown"]
    loc = advanced(client, scan_png, prompt="locate", target="Markdown")
    assert len(loc["regions"]) == 1
    x0, y0, x1, y1 = loc["regions"][0]["box_px"]
    assert y1 - y0 < 60 and x1 - x0 < 400  # the word, not the whole line or page


def test_tiling_mode_reads_the_same_text(client, pg9_png):
    single = advanced(client, pg9_png, prompt="free")
    tiled = advanced(client, pg9_png, prompt="free", crop_mode="tiling")
    assert tiled["crop_mode"] == "tiling" and tiled["tiles"]["tiles_h"] >= 2
    assert cer(tiled["text"], single["text"]) <= 0.05


def test_max_tokens_cuts_output(client, scan_png):
    j = advanced(client, scan_png, prompt="free", max_tokens=3)
    assert j["usage"]["finish_reason"] == "length" and j["usage"]["output_tokens"] == 3
    assert len(j["text"].split()) <= 3


def test_simple_route_and_base64_input(client, scan_png):
    r = client.post("/ocr/image/simple", data={"image_base64": base64.b64encode(scan_png).decode()})
    assert r.status_code == 200
    assert cer(r.json()["text"], OCR_TEST_TEXT) <= MAX_CER_SCAN


def test_generate_and_generate_with_file(client, scan_png):
    body = {
        "prompt": "<image>\nFree OCR.",
        "image_base64": "data:image/png;base64," + base64.b64encode(scan_png).decode(),
    }
    g = client.post("/generate", json=body)
    assert g.status_code == 200
    assert cer(g.json()["result"], OCR_TEST_TEXT) <= MAX_CER_SCAN
    f = client.post(
        "/generate_with_file", files={"file": ("s.png", scan_png)}, data={"prompt": "ocr", "max_tokens": "512"}
    )
    assert f.status_code == 200 and "<|det|>" in f.json()["result"]
    assert f.json()["task"] == "ocr_grounded"


def test_sagemaker_invocations_image(client, scan_png):
    r = client.post(
        "/invocations", json={"prompt": "<image>\\nFree OCR.", "image_base64": base64.b64encode(scan_png).decode()}
    )
    assert r.status_code == 200
    j = r.json()
    assert cer(j["text"], OCR_TEST_TEXT) <= MAX_CER_SCAN
    for field in ("extracted_text", "raw_output", "image_size", "prompt_used", "model_name", "has_bounding_boxes"):
        assert field in j


@pytest.mark.parametrize("name", ["qr_bill_example.jpg", "webp-test.webp", "2206.01062.tif", "example_image_01.png"])
def test_other_real_images_are_read(client, name):
    data = (DOCLING / name).read_bytes()
    r = client.post("/ocr/image/simple", files={"file": (name, data)})
    assert r.status_code == 200, r.text
    assert len(norm(r.json()["text"])) > 0


def test_qr_bill_reads_known_words(client):
    r = client.post("/ocr/image/simple", files={"file": ("bill.jpg", (DOCLING / "qr_bill_example.jpg").read_bytes())})
    text = r.json()["text"].lower()
    assert "receipt" in text or "payment" in text
