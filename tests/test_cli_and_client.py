"""The command-line tool (resumable folder OCR) and the interactive client test_ocr.py against a live server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import DOCLING, ROOT, cer, page_text, start_server


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "ocr_cli.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_folder_is_resumable(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("multi_page.pdf", "example_image_01.png", "corrupted.pdf"):
        shutil.copy(DOCLING / name, src / name)
    out = tmp_path / "out"
    first = run_cli(str(src), "-o", str(out), "--pages", "1-2", "--layouts")
    assert first.returncode == 1, first.stderr  # one file was bad
    assert "2 of 3" in first.stdout
    assert json.loads((out / "corrupted" / "error.json").read_text())["error"]["code"] == "not_a_pdf"
    doc = out / "multi_page"
    for name in ("multi_page.md", "multi_page_det.mmd", "multi_page_layouts.pdf", "result.json"):
        assert (doc / name).exists()
    result = json.loads((doc / "result.json").read_text())
    assert cer(result["pages"][1]["text"], page_text("multi_page.pdf", 1)) <= 0.15

    # Interrupted PDF: result.json and page 2 gone, page 1 kept -> only page 2 is OCRed again.
    page1 = doc / "pages" / "0001.json"
    stamp = page1.stat().st_mtime_ns
    (doc / "result.json").unlink()
    (doc / "pages" / "0002.json").unlink()
    shutil.copy(src / "multi_page.pdf", doc / "input.pdf")
    image_result = (out / "example_image_01" / "result.json").stat().st_mtime_ns
    second = run_cli(str(src), "-o", str(out), "--pages", "1-2")
    assert second.returncode == 1
    assert page1.stat().st_mtime_ns == stamp and (doc / "pages" / "0002.json").exists()
    assert (out / "example_image_01" / "result.json").stat().st_mtime_ns == image_result  # skipped
    assert json.loads((doc / "result.json").read_text())["pages_processed"] == 2


def test_interactive_client_runs_every_item(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    shutil.copy(DOCLING / "example_image_01.png", samples / "screenshot.png")
    shutil.copy(DOCLING / "single_page.pdf", samples / "doc.pdf")
    proc, base = start_server(tmp_path / "data")
    try:
        cmd = [sys.executable, "test_ocr.py", "--url", base, "--item", "9", "--dir", str(samples)]
        cmd += ["--out", str(tmp_path / "o")]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert r.stdout.count("PASS") == 8
        assert (tmp_path / "o" / "batch_results.zip").stat().st_size > 0
        assert (tmp_path / "o" / "doc_layouts.pdf").exists()
    finally:
        proc.kill()
        proc.wait(10)
