"""Load from a second process, and graceful shutdown, against a real server on loopback."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
from conftest import OCR_TEST_TEXT, ROOT, cer, start_server

sys.path.insert(0, str(ROOT / "bench"))
from load import run


def test_load_every_answer_right(tmp_path, scan_png):
    proc, base = start_server(tmp_path)
    try:
        stats = asyncio.run(run(base, scan_png, n=24, c=8))
    finally:
        proc.kill()
        proc.wait(10)
    print(stats)
    assert stats["errors"] == {} and stats["wrong_answers"] == 0 and stats["p95_s"] is not None


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, scan_png):
    proc, base = start_server(tmp_path)
    result: dict = {}

    def call() -> None:
        result["r"] = httpx.post(f"{base}/ocr/image/simple", files={"file": ("s.png", scan_png)}, timeout=120)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.4)  # the request is in flight
    proc.send_signal(signal.SIGTERM)
    t.join(120)
    code = proc.wait(60)
    r = result["r"]
    assert r.status_code == 200 and cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
