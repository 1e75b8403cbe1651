"""image_url fetching: SSRF refusals, redirects re-checked, size and error handling, against a real local server."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import OCR_TEST_TEXT, cer, make_client, render, serve_http, wait_ready

from config import Settings

SCAN = render("ocr_test.pdf")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/scan.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(SCAN)))
            self.end_headers()
            self.wfile.write(SCAN)
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.partition("?to=")[2])
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must apply while streaming
            self.wfile.write(b"\0" * 300_000)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    with serve_http(Handler) as url:
        yield url


@pytest.fixture(scope="module")
def allowed_client():
    """A service that may fetch from 127.0.0.1 only (URL_ALLOW_NETWORKS), with a small upload cap."""
    s = Settings(
        _env_file=None,
        url_allow_networks=["127.0.0.1/32"],
        max_upload_bytes=250_000,
        data_dir=Path("/tmp/ocr-test-data"),
    )
    with make_client(s) as c:
        wait_ready(c)
        yield c


def error_of(r):
    assert 400 <= r.status_code < 500, r.text
    return r.json()["error"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",  # a DNS name that resolves to loopback
        "http://169.254.169.254/latest/meta-data",  # cloud metadata (link-local)
        "http://[::1]/x.png",
        "http://10.0.0.1/x.png",
        "http://0.0.0.0/x.png",
    ],
)
def test_private_addresses_refused_by_default(client, url):
    err = error_of(client.post("/generate", json={"image_url": url}))
    assert err["code"] == "url_not_allowed" and "ALLOW_PRIVATE_URLS" in err["message"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/"])
def test_other_schemes_refused(client, url):
    err = error_of(client.post("/generate", json={"image_url": url}))
    assert err["code"] == "bad_url_scheme" and err["accepted"] == ["http", "https"]


def test_allowed_network_fetch_works(allowed_client, server):
    r = allowed_client.post("/ocr/image/simple", data={"image_url": f"{server}/scan.png"})
    assert r.status_code == 200, r.text
    assert cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1


def test_redirect_to_a_disallowed_address_is_refused(allowed_client, server):
    # 127.0.0.1 is allowed, 127.0.0.2 is not: the redirect hop must be checked again.
    r = allowed_client.post(
        "/generate", json={"image_url": f"{server}/redirect?to=http://127.0.0.2:{server.rsplit(':', 1)[1]}/scan.png"}
    )
    assert error_of(r)["code"] == "url_not_allowed"
    ok = allowed_client.post("/generate", json={"image_url": f"{server}/redirect?to=/scan.png", "prompt": "free"})
    assert ok.status_code == 200


def test_size_cap_while_streaming_and_http_errors(allowed_client, server):
    assert error_of(allowed_client.post("/generate", json={"image_url": f"{server}/big"}))["code"] == "file_too_large"
    err = error_of(allowed_client.post("/generate", json={"image_url": f"{server}/missing.png"}))
    assert err["code"] == "url_fetch_failed" and "404" in err["message"]


def test_too_many_redirects(allowed_client, server):
    url = f"{server}/scan.png"
    for _ in range(7):
        url = f"{server}/redirect?to={url}"
    assert error_of(allowed_client.post("/generate", json={"image_url": url}))["code"] in ("too_many_redirects",)
