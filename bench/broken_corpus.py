"""Every broken input against every upload route: prints how many answers were 2xx, 4xx and 5xx.

Corpus: ../shared/testdata/broken, the bad PDFs of ../shared/testdata/docling, and files made here
(zero-page PDF, truncated PDF, a PDF page of 200 x 200 inches, random bytes, a text file, a huge-header PNG).

    python bench/broken_corpus.py
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pymupdf

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = Path(os.environ.get("OCR_TESTDATA", ROOT.parent / "shared" / "testdata"))


def corpus() -> dict[str, bytes]:
    files = {f"broken/{p.name}": p.read_bytes() for p in sorted((TESTDATA / "broken").iterdir())}
    for name in ("corrupted.pdf", "2206.01062_pg3.pdf"):
        files[f"docling/{name}"] = (TESTDATA / "docling" / name).read_bytes()
    files["made/zero_pages.pdf"] = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    files["made/truncated.pdf"] = (TESTDATA / "docling" / "multi_page.pdf").read_bytes()[:5000]
    doc = pymupdf.open()
    doc.new_page(width=14400, height=14400).insert_text((72, 72), "a page of 200 x 200 inches")
    files["made/giant_page.pdf"] = doc.tobytes()
    files["made/random.bin"] = os.urandom(4096)
    files["made/notes.txt"] = b"plain text, not a document\n" * 10
    files["made/png_header_only.png"] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    return files


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from fastapi.testclient import TestClient

    from serve_ocr import create_app

    routes = ["/ocr/image/advanced", "/ocr/image/simple", "/generate_with_file", "/pdf/ocr", "/pdf/ocr/simple"]
    statuses: Counter = Counter()
    worst = []
    with TestClient(create_app()) as c:
        while c.get("/ready").status_code != 200:
            time.sleep(0.1)
        for name, data in corpus().items():
            for route in routes:
                r = c.post(route, files={"file": (Path(name).name, io.BytesIO(data))}, data={"max_tokens": "64"})
                statuses[r.status_code // 100 * 100] += 1
                if r.status_code >= 500:
                    worst.append((name, route, r.status_code, r.text[:200]))
            for route in ("/batch/ocr",):
                r = c.post(route, files=[("files", (Path(name).name, io.BytesIO(data)))])
                statuses[r.status_code // 100 * 100] += 1
                if r.status_code >= 500:
                    worst.append((name, route, r.status_code, r.text[:200]))
    counts = ", ".join(f"{k // 100}xx: {v}" for k, v in sorted(statuses.items()))
    print(f"{len(corpus())} inputs x 6 routes: {counts} (batch answers 200 with per-file errors)")
    for w in worst:
        print("5xx:", w)
    sys.exit(1 if worst else 0)


if __name__ == "__main__":
    main()
