"""The web page (GET /ui) in a real headless Chromium against a real uvicorn server on the CPU engine, plus its
routes (static files, page records and images, API keys for the events stream) without a browser."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import zipfile

import browser
import httpx
import pytest
from conftest import DOCLING, make_client, norm, start_server, wait_ready

from config import Settings


def visible(markdown: str) -> str:
    """What a reader sees of a region's Markdown: no list, heading or emphasis markers."""
    lines = [re.sub(r"^\s*([-*+]|\d+[.)]|#{1,6})\s+", "", ln) for ln in markdown.splitlines()]
    return norm(re.sub(r"\*\*|`", "", " ".join(lines)))


needs_browser = pytest.mark.skipif(browser.missing() is not None, reason=f"no browser: {browser.missing()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, base = start_server(tmp_path_factory.mktemp("ui-data"))
    yield base
    proc.kill()
    proc.wait(10)


@pytest.fixture()
def driver():
    d = browser.chrome(1360, 1000)
    yield d
    d.quit()


def _by():
    from selenium.webdriver.common.by import By

    return By


@needs_browser
def test_upload_pdf_pages_boxes_highlight_and_zip(server, driver):
    by = _by()
    browser.submit_files(driver, server, [DOCLING / "multi_page.pdf"], pages="1-3")
    job_id = browser.wait_done(driver)
    articles = driver.find_elements(by.CSS_SELECTOR, ".file .page")
    assert [a.get_attribute("data-page") for a in articles] == ["1", "2", "3"]
    bar = driver.find_element(by.CSS_SELECTOR, ".file .bar")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "3"
    for article in articles:
        n = article.get_attribute("data-page")
        record = httpx.get(f"{server}/jobs/{job_id}/files/0/pages/{n}").json()
        assert record["regions"], record
        boxes = article.find_elements(by.CSS_SELECTOR, ".box")
        assert len(boxes) == len(record["regions"])  # one box drawn per region the API reports
        shown = norm(article.find_element(by.CSS_SELECTOR, ".page-md").text)
        for region in record["regions"]:
            assert visible(region["text"])[:40] in shown  # the page's text is on the page
        img = article.find_element(by.CSS_SELECTOR, ".page-figure img")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
    # Click a box: it and its Markdown block light up, and its label and text are shown.
    first = articles[0]
    boxes = first.find_elements(by.CSS_SELECTOR, ".box")
    record = httpx.get(f"{server}/jobs/{job_id}/files/0/pages/1").json()
    k = min(2, len(boxes) - 1)
    boxes[k].click()
    assert "active" in boxes[k].get_attribute("class")
    active_blocks = first.find_elements(by.CSS_SELECTOR, ".block.active")
    assert len(active_blocks) == 1 and visible(record["regions"][k]["text"])[:40] in norm(active_blocks[0].text)
    assert norm(record["regions"][k]["text"])[:40] in norm(first.find_element(by.CSS_SELECTOR, ".box-info").text)
    assert boxes[0].get_attribute("tabindex") == "0"  # keyboard-reachable
    # ...and the other way: hovering/focusing a block highlights its box.
    blocks = first.find_elements(by.CSS_SELECTOR, ".block")
    driver.execute_script("arguments[0].focus()", blocks[0])
    assert "active" in boxes[0].get_attribute("class") and "active" not in boxes[k].get_attribute("class")
    # Downloads: the ZIP link gives the bundle with its manifest.
    href = driver.find_element(by.CSS_SELECTOR, "#downloads a[data-kind=zip]").get_attribute("href")
    z = zipfile.ZipFile(io.BytesIO(httpx.get(href).content))
    manifest = json.loads(z.read("results.json"))
    assert [f["filename"] for f in manifest["files"]] == ["multi_page.pdf"]
    assert manifest["files"][0]["pages_processed"] == 3 and "multi_page/multi_page.md" in z.namelist()
    md_link = driver.find_element(by.CSS_SELECTOR, "#downloads a").get_attribute("href")
    assert httpx.get(md_link).text.startswith(record["markdown"][:30])
    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert logs == []  # no script errors


@needs_browser
def test_several_files_and_figure_crops(server, driver):
    by = _by()
    browser.submit_files(driver, server, [DOCLING / "picture_classification.pdf", DOCLING / "ocr_test.pdf"], pages="1")
    job_id = browser.wait_done(driver)
    cards = driver.find_elements(by.CSS_SELECTOR, ".file")
    assert [c.find_element(by.CSS_SELECTOR, ".file-name").text for c in cards] == [
        "picture_classification.pdf",
        "ocr_test.pdf",
    ]
    for card in cards:  # a progress bar per file, full
        bar = card.find_element(by.CSS_SELECTOR, ".bar")
        assert bar.get_attribute("value") == bar.get_attribute("max") == "1"
    record = httpx.get(f"{server}/jobs/{job_id}/files/0/pages/1").json()
    figures = [r for r in record["regions"] if r["label"] == "image"]
    assert figures  # the CPU engine found the picture
    page = cards[0].find_element(by.CSS_SELECTOR, ".page")
    assert len(page.find_elements(by.CSS_SELECTOR, ".box.label-image")) == len(figures)
    crops = page.find_elements(by.CSS_SELECTOR, ".crops img")
    assert len(crops) == len(figures)
    deadline = time.time() + 20
    while time.time() < deadline and not driver.execute_script("return arguments[0].naturalWidth", crops[0]):
        time.sleep(0.2)
    x1, y1, x2, y2 = figures[0]["box_px"]
    size = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", crops[0])
    assert abs(size[0] - (x2 - x1)) <= 2 and abs(size[1] - (y2 - y1)) <= 2  # the figure's own crop
    page.find_element(by.CSS_SELECTOR, ".box.label-image").click()
    assert page.find_elements(by.CSS_SELECTOR, ".block.active .crop img")  # its block is the figure
    assert "Docling" in cards[1].find_element(by.CSS_SELECTOR, ".page-md").text


@needs_browser
def test_corrupt_pdf_shows_the_api_error(server, driver):
    by = _by()
    browser.submit_files(driver, server, [DOCLING / "corrupted.pdf"])
    job_id = browser.wait_done(driver)
    api_error = httpx.get(f"{server}/jobs/{job_id}").json()["files"][0]["error"]
    shown = driver.find_element(by.CSS_SELECTOR, ".file-error")
    assert api_error["code"] in ("corrupt_pdf", "not_a_pdf") and shown.is_displayed()
    assert shown.text == api_error["message"]  # as the API words it


@needs_browser
def test_refused_submission_shows_the_api_error(server, driver):
    by = _by()
    driver.get(f"{server}/ui")
    browser.submit_files(driver, server, [DOCLING / "multi_page.pdf"], pages="9-12")
    # pages are checked when the file is read: the file's error says what was wrong with the range
    job_id = browser.wait_done(driver)
    api_error = httpx.get(f"{server}/jobs/{job_id}").json()["files"][0]["error"]
    assert driver.find_element(by.CSS_SELECTOR, ".file-error").text == api_error["message"]
    # and an answer refused at once (422 here: the CPU engine cannot describe images) shows in the form
    driver.get(f"{server}/ui")
    browser.submit_files(driver, server, [DOCLING / "multi_page.pdf"], prompt_text="<image>\nDescribe this image.")
    deadline = time.time() + 30
    while time.time() < deadline and not driver.find_element(by.ID, "error").text:
        time.sleep(0.1)
    r = httpx.post(
        f"{server}/jobs",
        files=[("files", ("m.pdf", (DOCLING / "multi_page.pdf").read_bytes()))],
        data={"prompt": "<image>\nDescribe this image."},
    )
    assert r.status_code == 422 and driver.find_element(by.ID, "error").text == r.json()["error"]["message"]


@needs_browser
def test_markdown_renderer_tables_and_formulas(server, driver):
    by = _by()
    driver.get(f"{server}/ui")
    md = (
        "# Title\n\nSome **bold** and $x_1$ text.\n\n\\[\\frac{a}{b} = c\\]\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "<table><tr><td colspan=2>x</td></tr><tr><td>3</td><td>4</td></tr></table>\n\n"
        "<img src=x onerror=\"document.title='owned'\">\n\n- one\n- two"
    )
    driver.execute_script(
        "const d = document.createElement('div'); d.id = 't'; d.className = 'md';"
        "d.append(renderMarkdown(arguments[0], (s) => s)); document.body.append(d); typeset(d);",
        md,
    )
    root = driver.find_element(by.ID, "t")
    tables = root.find_elements(by.TAG_NAME, "table")
    assert len(tables) == 2 and tables[1].find_element(by.TAG_NAME, "td").get_attribute("colspan") == "2"
    assert root.find_element(by.TAG_NAME, "strong").text == "bold"
    assert len(root.find_elements(by.TAG_NAME, "li")) == 2
    deadline = time.time() + 30  # MathJax (from its PyPI package, served by the app) typesets both formulas
    while time.time() < deadline and len(root.find_elements(by.CSS_SELECTOR, "mjx-container")) < 2:
        time.sleep(0.2)
    assert len(root.find_elements(by.CSS_SELECTOR, "mjx-container")) == 2
    assert root.find_elements(by.CSS_SELECTOR, "mjx-container[display=true]")
    assert driver.title != "owned" and not root.find_elements(by.CSS_SELECTOR, "img[onerror]")


def test_ui_routes_and_api_key_for_events(tmp_path):
    settings = Settings(_env_file=None, data_dir=tmp_path, api_keys=["k1"])
    with make_client(settings) as c:
        wait_ready(c)
        page = c.get("/ui")  # open: the page asks for the key itself
        assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "app.js" in page.text
        assert "renderMarkdown" in c.get("/ui/static/app.js").text
        assert c.get("/ui/static/../config.py").status_code == 404
        assert c.get("/ui/static/%2e%2e/config.py").status_code == 404
        assert c.get("/ui/vendor/mathjax/tex-svg.js").status_code == 200
        assert c.get("/ui/vendor/mathjax/../../__init__.py").status_code == 404
        assert c.get("/ocr/info").status_code == 401
        job = c.post(
            "/jobs", files=[("files", ("m.pdf", (DOCLING / "corrupted.pdf").read_bytes()))], headers={"X-API-Key": "k1"}
        )
        job_id = job.json()["job_id"]
        assert c.get(f"/jobs/{job_id}/events").status_code == 401
        assert c.get(f"/jobs/{job_id}/events?api_key=wrong").status_code == 401
        assert c.get(f"/jobs/{job_id}?api_key=k1").status_code == 401  # the query key is for the events route only
        with c.stream("GET", f"/jobs/{job_id}/events?api_key=k1") as r:
            text = "".join(r.iter_text())
        assert r.status_code == 200 and "event: done" in text
        h = {"X-API-Key": "k1"}
        err = c.get(f"/jobs/{job_id}/files/0/pages/1", headers=h).json()["error"]
        assert err["code"] == "page_not_found"
        assert c.get(f"/jobs/{job_id}/files/5/pages/1", headers=h).json()["error"]["code"] == "file_not_found"
        assert c.get(f"/jobs/{job_id}/files/0/images/..%2Fx.jpg", headers=h).status_code == 404
    # uvicorn's access log line for that request, as configure_logging leaves it: the key is redacted
    args = ("127.0.0.1:5000", "GET", f"/jobs/{job_id}/events?after=0&api_key=k1", "1.1", 200)
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None)
    assert all(f.filter(record) for f in logging.getLogger("uvicorn.access").filters)
    assert "k1" not in record.getMessage() and "api_key=***" in record.getMessage()


def test_page_record_image_and_crops_routes(tmp_path, pg9_png):
    with make_client(Settings(_env_file=None, data_dir=tmp_path)) as c:
        wait_ready(c)
        pdf = (DOCLING / "multi_page.pdf").read_bytes()
        job_id = c.post(
            "/jobs", files=[("files", ("m.pdf", pdf)), ("files", ("p.png", pg9_png))], data={"pages": "2"}
        ).json()["job_id"]
        deadline = time.time() + 180
        while c.get(f"/jobs/{job_id}").json()["state"] != "done" and time.time() < deadline:
            time.sleep(0.2)
        rec = c.get(f"/jobs/{job_id}/files/0/pages/2").json()
        assert rec["page"] == 2 and rec["regions"] and rec["dpi"] == 144
        # Not kept (no keep_page_images): rendered again from the job's input, at the page's dpi.
        img = c.get(f"/jobs/{job_id}/files/0/pages/2/image")
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        from PIL import Image

        assert Image.open(io.BytesIO(img.content)).size == tuple(rec["image_size"])
        image_rec = c.get(f"/jobs/{job_id}/files/1/pages/1").json()
        img2 = Image.open(io.BytesIO(c.get(f"/jobs/{job_id}/files/1/pages/1/image").content))
        assert img2.size == tuple(image_rec["image_size"])
        assert c.get(f"/jobs/{job_id}/files/0/pages/1").json()["error"]["code"] == "page_not_found"  # not selected
        assert c.get(f"/jobs/{job_id}/files/0/markdown").text.strip() == rec["markdown"].strip()
        assert c.get(f"/jobs/{job_id}/files/0/layouts.pdf").json()["error"]["code"] == "no_layouts"


@needs_browser
def test_api_key_field_when_keys_are_on(tmp_path, driver):
    by = _by()
    proc, base = start_server(tmp_path, env={"API_KEYS": "ui-key"})
    try:
        driver.get(f"{base}/ui")
        deadline = time.time() + 30
        while time.time() < deadline and not driver.find_element(by.ID, "error").text:
            time.sleep(0.1)
        field = driver.find_element(by.ID, "key-field")
        assert field.is_displayed()  # the API said 401: the page asks for a key, in the API's words
        assert driver.find_element(by.ID, "error").text == httpx.get(f"{base}/ocr/info").json()["error"]["message"]
        driver.find_element(by.ID, "api-key").send_keys("ui-key")
        driver.find_element(by.ID, "files").send_keys(str(DOCLING / "corrupted.pdf"))
        driver.find_element(by.ID, "run").click()
        job_id = browser.wait_done(driver, 60)  # the events stream took the key as ?api_key=
        job = httpx.get(f"{base}/jobs/{job_id}", headers={"X-API-Key": "ui-key"}).json()
        assert driver.find_element(by.CSS_SELECTOR, ".file-error").text == job["files"][0]["error"]["message"]
    finally:
        proc.kill()
        proc.wait(10)
