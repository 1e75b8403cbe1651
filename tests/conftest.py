"""Shared fixtures: the real app on the CPU engine, real documents from ../shared/testdata."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pymupdf
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from rapidfuzz.distance import Levenshtein

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from service import start_service, stop_service  # noqa: E402

from config import Settings  # noqa: E402
from serve_ocr import create_app  # noqa: E402

TESTDATA = Path(os.environ.get("OCR_TESTDATA", ROOT.parent / "shared" / "testdata"))
DOCLING = TESTDATA / "docling"
BROKEN = TESTDATA / "broken"
# The undecodable files of ../shared/testdata/broken and the error each must give: (name, status, code).
BROKEN_CASES = [
    ("bomb_40000x40000.png", 413, "image_too_large"),
    ("truncated.jpg", 422, "corrupt_image"),
    ("not_an_image.png", 415, "pdf_sent_as_image"),
    ("empty.png", 400, "empty_file"),
]
# What ocr_test.pdf's scanned page says (it has no text layer; read by eye).
OCR_TEST_TEXT = "Docling bundles PDF document conversion to JSON and Markdown in an easy self contained package"


def pytest_configure(config: pytest.Config) -> None:
    if not DOCLING.is_dir():
        raise pytest.UsageError(f"test documents not found at {TESTDATA} (set OCR_TESTDATA)")


def norm(text: str) -> str:
    return " ".join(text.split())


def cer(hyp: str, ref: str) -> float:
    """Character error rate after whitespace normalisation."""
    return Levenshtein.normalized_distance(norm(hyp), norm(ref))


def render(pdf: str, page: int = 0, dpi: int = 144) -> bytes:
    return pymupdf.open(DOCLING / pdf)[page].get_pixmap(dpi=dpi).tobytes("png")


def scan_page() -> Image.Image:
    """A real page as RGB pixels: one of ../shared/testdata's PDFs rendered at 100 dpi."""
    return Image.open(io.BytesIO(render("2305.03393v1-pg9.pdf", dpi=100))).convert("RGB")


def cut_inside(data: bytes) -> bytes:
    """`data` with 200 bytes in its middle (inside the pixel data) flipped: header and framing stay whole."""
    bad, mid = bytearray(data), len(data) // 2
    for i in range(mid, mid + 200):
        bad[i] ^= 0x5A
    return bytes(bad)


def page_text(pdf: str, page: int = 0) -> str:
    return pymupdf.open(DOCLING / pdf)[page].get_text()


def make_client(settings: Settings | None = None, routers: dict | None = None) -> TestClient:
    app = create_app(settings or Settings(_env_file=None, num_workers=2, data_dir=Path("/tmp/ocr-test-data")), routers)
    return TestClient(app)


def wait_ready(client: TestClient, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"engine not ready: {client.get('/ready').json()}")


def close_within(client: TestClient, timeout: float) -> float:
    """Leave `client`'s `with` block (the app's lifespan shutdown) from a daemon thread, so that a shutdown that
    hangs fails the test instead of hanging it; returns the seconds it took, raises what it raised."""
    outcome: list[BaseException | None] = []

    def close() -> None:
        try:
            client.__exit__(None, None, None)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    started = time.monotonic()
    thread = threading.Thread(target=close, daemon=True)
    thread.start()
    thread.join(timeout)
    assert outcome, f"the app was still stopping after {timeout:g} s"
    if outcome[0] is not None:
        raise AssertionError("the app's shutdown failed") from outcome[0]
    return time.monotonic() - started


@pytest.fixture(scope="session")
def client():
    with make_client() as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def pg9_png() -> bytes:
    return render("2305.03393v1-pg9.pdf")


@pytest.fixture(scope="session")
def scan_png() -> bytes:
    return render("ocr_test.pdf")


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A plain HTTP server on a free loopback port with `handler`; yields its base URL, stops on exit."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()


def start_server(data_dir: Path, base: str | None = None, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A real uvicorn server on loopback (CPU engine); returns (process, base URL) once it is ready."""
    return start_service({"DATA_DIR": str(data_dir), "ENGINE": "cpu", "NUM_WORKERS": "1", **(env or {})}, base=base)


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory):
    """moto's S3 server on loopback, with the standard AWS_* variables pointing this process (and servers it
    starts) at it; yields (boto3 client, endpoint, request log path)."""
    import moto_s3

    log = tmp_path_factory.mktemp("moto") / "requests.log"
    proc, endpoint = moto_s3.start_moto(log)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in moto_s3.s3_env(endpoint).items():
                mp.setenv(k, v)
            yield moto_s3.client(endpoint), endpoint, log
    finally:
        stop_service(proc, grace=10)
