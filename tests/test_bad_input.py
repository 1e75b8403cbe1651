"""Bad input gets a clear 4xx JSON error, never a 500 or a hang; other users' work goes on."""

from __future__ import annotations

import base64

import pytest
from conftest import BROKEN, BROKEN_CASES, DOCLING, OCR_TEST_TEXT, cer


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"]
    if code:
        assert err["code"] == code
    return err


@pytest.mark.parametrize(("name", "status", "code"), BROKEN_CASES)
@pytest.mark.parametrize("route", ["/ocr/image/advanced", "/ocr/image/simple", "/generate_with_file"])
def test_broken_uploads(client, route, name, status, code):
    r = client.post(route, files={"file": (name, (BROKEN / name).read_bytes())})
    err = assert_error(r, status, code)
    if status in (415, 422):
        assert "PNG" in err.get("accepted", []) or code == "pdf_sent_as_image"


@pytest.mark.parametrize("name", ["cmyk.jpg", "gray16.png", "animated.gif", "multipage.tif", "exif_rotated.jpg"])
def test_odd_valid_images_are_served(client, name):
    r = client.post("/ocr/image/advanced", files={"file": (name, (BROKEN / name).read_bytes())})
    assert r.status_code == 200, r.text


def test_pdf_bytes_and_unsupported_formats(client):
    r = client.post("/ocr/image/simple", files={"file": ("doc.pdf", (DOCLING / "single_page.pdf").read_bytes())})
    assert_error(r, 415, "pdf_sent_as_image")
    r = client.post("/ocr/image/simple", files={"file": ("notes.txt", b"just some text, not an image")})
    assert_error(r, 415, "not_an_image")


def test_missing_or_double_input(client, scan_png):
    assert_error(client.post("/ocr/image/advanced", data={"prompt": "free"}), 400, "need_one_image")
    r = client.post(
        "/ocr/image/advanced",
        files={"file": ("a.png", scan_png)},
        data={"image_base64": base64.b64encode(scan_png).decode()},
    )
    err = assert_error(r, 400, "need_one_image")
    assert "file" in err["message"] and "image_base64" in err["message"]
    assert_error(client.post("/generate", json={"prompt": "free"}), 400, "need_one_image")


def test_bad_base64_and_bad_fields(client):
    assert_error(client.post("/generate", json={"image_base64": "@@not base64@@"}), 400, "bad_base64")
    assert_error(client.post("/generate", json={"image_base64": "aGVsbG8=", "max_tokens": 0}), 422, "invalid_request")
    assert_error(client.post("/generate", content=b"{not json", headers={"content-type": "application/json"}), 422)
    r = client.post("/ocr/image/advanced", files={"file": ("a.png", b"x")}, data={"crop_mode": "sideways"})
    assert_error(r, 422, "invalid_request")


def test_bad_mode_and_unsupported_prompts(client, scan_png):
    r = client.post("/ocr/image/advanced", files={"file": ("a.png", scan_png)}, data={"mode": "huge"})
    assert "gundam" in assert_error(r, 422, "bad_mode")["accepted"]
    for prompt in ("figure", "describe", "<image>\nWhat colour is the car?"):
        r = client.post("/ocr/image/advanced", files={"file": ("a.png", scan_png)}, data={"prompt": prompt})
        err = assert_error(r, 422, "prompt_not_supported")
        assert "vllm" in err["message"] and "free_ocr" in err["accepted"]
    assert_error(client.post("/generate", json={"prompt": "locate", "image_base64": "aGVsbG8="}), 422, "missing_target")


def test_oversize_upload_refused_from_content_length(client):
    limit = client.app.state.settings.max_upload_bytes
    r = client.post("/ocr/image/simple", files={"file": ("big.png", b"\0" * (limit * 4 // 3 + 70_000))})
    assert_error(r, 413, "request_too_large")


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/generate"), 405, "method_not_allowed")


def test_bad_requests_do_not_disturb_good_ones(client, scan_png):
    """A good request served among a burst of bad ones still gets its right answer."""
    import concurrent.futures as cf

    bad = (BROKEN / "truncated.jpg").read_bytes()

    def good():
        return client.post("/ocr/image/simple", files={"file": ("ok.png", scan_png)})

    def broken():
        return client.post("/ocr/image/simple", files={"file": ("bad.jpg", bad)})

    with cf.ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(good)] + [pool.submit(broken) for _ in range(8)] + [pool.submit(good)]
        results = [f.result() for f in futs]
    assert [r.status_code for r in results] == [200] + [422] * 8 + [200]
    assert all(cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1 for r in (results[0], results[-1]))
