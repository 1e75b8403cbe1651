"""Character error rate of the service on real pages, against each page's own text layer.

Renders each page with PyMuPDF (default 144 dpi), sends it to /ocr/image/advanced, and compares the
returned text with `page.get_text()` after whitespace normalisation (rapidfuzz Levenshtein).

    python bench/accuracy.py                          # in-process app on the CPU engine
    python bench/accuracy.py --url http://localhost:8000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx
import pymupdf
from rapidfuzz.distance import Levenshtein

ROOT = Path(__file__).resolve().parents[1]
DOCLING = ROOT.parent / "shared" / "testdata" / "docling"
# ocr_test.pdf is a scan with no text layer: its words, read by eye.
OCR_TEST_TEXT = "Docling bundles PDF document conversion to JSON and Markdown in an easy self contained package"
PAGES = [
    ("ocr_test.pdf", 0),
    ("2305.03393v1-pg9.pdf", 0),
    ("picture_classification.pdf", 0),
    ("code_and_formula.pdf", 0),
    ("multi_page.pdf", 1),
    ("right_to_left_01.pdf", 0),
]


def norm(s: str) -> str:
    return " ".join(s.split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running service; default: start the app in-process")
    ap.add_argument("--dpi", type=int, default=144)
    ap.add_argument("--prompt", default="document")
    ap.add_argument("--docs", default=str(DOCLING))
    args = ap.parse_args()

    if args.url:
        client = httpx.Client(base_url=args.url, timeout=600)
        ctx = None
    else:
        sys.path.insert(0, str(ROOT))
        from fastapi.testclient import TestClient

        from serve_ocr import create_app

        ctx = TestClient(create_app())
        client = ctx.__enter__()
        while client.get("/ready").status_code != 200:
            time.sleep(0.1)

    print(f"{'page':34} {'chars':>6} {'CER':>6} {'WER':>6} {'seconds':>8}")
    total_err = total_chars = 0.0
    for name, pno in PAGES:
        page = pymupdf.open(Path(args.docs) / name)[pno]
        truth = norm(page.get_text()) or (OCR_TEST_TEXT if name == "ocr_test.pdf" else "")
        png = page.get_pixmap(dpi=args.dpi).tobytes("png")
        t0 = time.perf_counter()
        r = client.post("/ocr/image/advanced", files={"file": ("p.png", png)}, data={"prompt": args.prompt})
        dt = time.perf_counter() - t0
        r.raise_for_status()
        hyp = norm(r.json()["text"])
        c = Levenshtein.normalized_distance(hyp, truth)
        w = Levenshtein.normalized_distance(hyp.split(), truth.split())
        total_err += Levenshtein.distance(hyp, truth)
        total_chars += max(len(truth), len(hyp))
        print(f"{name + ' p' + str(pno + 1):34} {len(truth):>6} {c:>6.3f} {w:>6.3f} {dt:>8.2f}")
    print(f"{'all pages (character-weighted)':34} {int(total_chars):>6} {total_err / total_chars:>6.3f}")
    if ctx:
        ctx.__exit__(None, None, None)


if __name__ == "__main__":
    main()
