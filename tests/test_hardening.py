"""API keys, request ids and JSON logs, Prometheus metrics, the streamed body cap, and backpressure."""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
from pathlib import Path

from conftest import OCR_TEST_TEXT, cer, make_client, wait_ready

from config import Settings
from middleware import JsonFormatter, request_id_var

KEY = "s3cret-key-123"


def test_api_keys(tmp_path, scan_png, caplog):
    keyfile = tmp_path / "keys"
    keyfile.write_text("# ops\nother-key\n")
    s = Settings(_env_file=None, api_keys=[KEY], api_keys_file=keyfile, data_dir=tmp_path)
    with caplog.at_level(logging.INFO), make_client(s) as c:
        wait_ready(c)
        for path in ("/health", "/ready", "/ping", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 200, path
        r = c.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert c.get("/", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/pdf/status", headers={"X-API-Key": "other-key"}).status_code == 200
        ok = c.post(
            "/ocr/image/simple", files={"file": ("s.png", scan_png)}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert ok.status_code == 200 and cer(ok.json()["text"], OCR_TEST_TEXT) <= 0.1
        schemes = c.get("/openapi.json").json()["components"]["securitySchemes"]
        assert any(v.get("name") == "X-API-Key" for v in schemes.values())  # Swagger UI's Authorize button
    assert KEY not in caplog.text


def test_request_id_is_echoed_or_made(client):
    r = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    made = client.get("/health", headers={"X-Request-ID": "bad id with spaces\n"}).headers["x-request-id"]
    assert made != "bad id with spaces\n" and len(made) == 32


def test_json_log_lines_carry_the_request_id():
    token = request_id_var.set("rid-1")
    try:
        record = logging.LogRecord("ocr.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
        record.fields = {"status": 200}
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["request_id"] == "rid-1" and line["message"] == "GET /x" and line["status"] == 200


def test_metrics(client, scan_png):
    client.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
    client.post("/ocr/image/simple", files={"file": ("x.jpg", b"\xff\xd8\xff broken")})
    text = client.get("/metrics").text
    assert 'ocr_requests_total{method="POST",route="/ocr/image/simple",status="200"}' in text
    assert 'route="/ocr/image/simple",status="415"' in text  # errors are counted by status too
    assert 'ocr_pages_total{engine="cpu",outcome="ok"}' in text
    assert 'ocr_tokens_total{engine="cpu",kind="output"}' in text
    assert "ocr_request_seconds_bucket" in text and "ocr_engine_queue_depth" in text


def test_streamed_body_over_the_limit_is_refused(tmp_path):
    s = Settings(_env_file=None, max_upload_bytes=100_000, data_dir=tmp_path)
    with make_client(s) as c:
        wait_ready(c)

        def chunks():  # no Content-Length: chunked transfer, the cap must apply while it streams
            for _ in range(100):
                yield b"x" * 10_000

        r = c.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.get("/health").status_code == 200


def test_saturated_engine_answers_503_with_retry_after(tmp_path, scan_png):
    s = Settings(_env_file=None, num_workers=1, max_queue=1, data_dir=Path(tmp_path))
    with make_client(s) as c:
        wait_ready(c)
        with cf.ThreadPoolExecutor(6) as pool:
            futs = [pool.submit(c.post, "/ocr/image/simple", files={"file": ("s.png", scan_png)}) for _ in range(6)]
            rs = [f.result() for f in futs]
        codes = sorted(r.status_code for r in rs)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
        busy = next(r for r in rs if r.status_code == 503)
        assert busy.headers["retry-after"] and busy.json()["error"]["code"] == "busy"
        assert all(cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1 for r in rs if r.status_code == 200)


def test_malformed_multipart_and_wrong_content_types(client, scan_png):
    junk = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nnot closed'
    r = client.post("/ocr/image/simple", content=junk, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert 400 <= r.status_code < 500, r.text
    r = client.post("/ocr/image/simple", content=b"\x00\x01", headers={"content-type": "multipart/form-data"})
    assert 400 <= r.status_code < 500  # no boundary at all
    r = client.post("/generate", content=scan_png, headers={"content-type": "image/png"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = client.post("/batch/ocr", json={"files": ["a.png"]})
    assert r.status_code == 422
    long_name = "ü" * 300 + ".png"
    r = client.post("/batch/ocr/simple", files=[("files", (long_name, scan_png))])
    assert r.status_code == 200 and r.json()["results"][0]["filename"] == long_name
