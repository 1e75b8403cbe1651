"""How well the service's CPU engine reads real pages, next to the bare OCR library it wraps, in one run.

Each page of a born-digital PDF is rendered with PyMuPDF (144 dpi) and read three ways, back to back:
  bare       RapidOCR called directly with its defaults (what a user who installs the library gets)
  free       the service, POST /ocr/image/simple (Free OCR: the text, line by line)
  document   the service, POST /ocr/image/advanced prompt=document (grounded Markdown; its words, markup
             removed, are scored the same way)
and, with --tesseract, Tesseract (`tesseract -l eng`) as a peer when the binary is installed.
Word-F1 is the bag of case-folded, whitespace-separated words against the page's own text layer
(`page.get_text()`); ocr_test.pdf, a scan with no text layer, is scored by CER against its words read
by eye. Times are per page; ratios are service / bare from the same run. The service runs as its own
process (uvicorn, NUM_WORKERS=1 so one request gets every core, as the bare library does); its peak
RSS (VmHWM) is printed at the end, with the CPU.

    python bench/accuracy.py                 # English pages, scan CER, unreadable-script pages
    python bench/accuracy.py --tesseract     # add Tesseract as a peer
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pymupdf
from rapidfuzz.distance import Levenshtein
from service import ROOT, start_service, stop_service

DOCLING = ROOT.parent / "shared" / "testdata" / "docling"
# ocr_test.pdf is a scan with no text layer: its words, read by eye.
OCR_TEST_TEXT = "Docling bundles PDF document conversion to JSON and Markdown in an easy self contained package"
ENGLISH = [
    ("2305.03393v1-pg9.pdf", 0),
    ("code_and_formula.pdf", 0),
    ("code_and_formula.pdf", 1),
    ("headings_and_text.pdf", 0),
    *[("multi_page.pdf", i) for i in range(5)],
    *[("multi_page_generated.pdf", i) for i in range(3)],
    ("picture_classification.pdf", 0),
    ("picture_classification.pdf", 1),
    ("single_page.pdf", 0),
]
UNREADABLE = [("right_to_left_01.pdf", 0), ("normal_4pages.pdf", 0)]  # Arabic, Korean: expect a warning


def words(text: str) -> Counter:
    return Counter(text.casefold().split())


def word_f1(hyp: str, truth: str) -> float:
    """F1 of the bags of case-folded whitespace-separated words."""
    h, t = words(hyp), words(truth)
    if not h or not t:
        return float(h == t)
    hit = sum((h & t).values())
    return 0.0 if hit == 0 else 2 * hit / (sum(h.values()) + sum(t.values()))


def markdown_words(md: str) -> str:
    """The words of Markdown/HTML output: tags, heading and list markers, image links removed."""
    md = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", md)
    md = re.sub(r"<[^>]+>", " ", md)
    return re.sub(r"(?m)^\s*(?:#{1,6}|-)\s+", "", md)


def render(name: str, pno: int, dpi: int) -> tuple[str, bytes, np.ndarray]:
    page = pymupdf.open(DOCLING / name)[pno]
    pix = page.get_pixmap(dpi=dpi)
    bgr = np.frombuffer(pix.samples, np.uint8).reshape(pix.h, pix.w, pix.n)[:, :, 2::-1]
    return page.get_text(), pix.tobytes("png"), np.ascontiguousarray(bgr)


def tesseract(png: bytes) -> str:
    r = subprocess.run(["tesseract", "stdin", "stdout", "-l", "eng"], input=png, capture_output=True, check=True)
    return r.stdout.decode()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dpi", type=int, default=144)
    ap.add_argument("--tesseract", action="store_true", help="add Tesseract (tesseract -l eng) as a peer")
    args = ap.parse_args()
    use_tess = args.tesseract and shutil.which("tesseract") is not None

    from rapidocr import RapidOCR  # the bare library, as a user calls it

    bare_engine = RapidOCR(params={"Global.log_level": "error"})
    proc, base = start_service({"ENGINE": "cpu", "NUM_WORKERS": "1"}, timeout=180)
    client = httpx.Client(base_url=base, timeout=600)
    rows = []
    try:

        def bare(bgr: np.ndarray) -> tuple[str, float]:
            t0 = time.perf_counter()
            r = bare_engine(bgr)
            return "\n".join(r.txts or []), time.perf_counter() - t0

        def service(png: bytes, route: str, prompt: str) -> tuple[dict, float]:
            t0 = time.perf_counter()
            r = client.post(route, files={"file": ("page.png", png)}, data={"prompt": prompt})
            r.raise_for_status()
            return r.json(), time.perf_counter() - t0

        head = f"{'page':30} {'words':>5} {'bare':>6} {'free':>6} {'doc':>6}" + (f" {'tess':>6}" if use_tess else "")
        print(head + f" {'t bare':>7} {'t free':>7} {'t doc':>7} {'free/bare':>9} {'doc/bare':>8}")
        for name, pno in ENGLISH:
            truth, png, bgr = render(name, pno, args.dpi)
            b_text, b_t = bare(bgr)
            free, f_t = service(png, "/ocr/image/simple", "free")
            doc, d_t = service(png, "/ocr/image/advanced", "document")
            row = {
                "page": f"{name} p{pno + 1}",
                "bare": word_f1(b_text, truth),
                "free": word_f1(free["text"], truth),
                "doc": word_f1(markdown_words(doc["markdown"]), truth),
                "t_bare": b_t,
                "t_free": f_t,
                "t_doc": d_t,
            }
            if use_tess:
                row["tess"] = word_f1(tesseract(png), truth)
            rows.append(row)
            tess = f" {row['tess']:>6.3f}" if use_tess else ""
            print(
                f"{row['page']:30} {sum(words(truth).values()):>5} {row['bare']:>6.3f} {row['free']:>6.3f} "
                f"{row['doc']:>6.3f}{tess} {b_t:>7.2f} {f_t:>7.2f} {d_t:>7.2f} {f_t / b_t:>9.2f} {d_t / b_t:>8.2f}",
                flush=True,
            )
        keys = ("bare", "free", "doc", *(["tess"] if use_tess else []))
        mean = {k: statistics.mean(r[k] for r in rows) for k in keys}
        print(
            "mean word-F1: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items())
            + f"; pages where free < bare: {sum(r['free'] < r['bare'] for r in rows)}"
            + f", doc < bare: {sum(r['doc'] < r['bare'] for r in rows)}"
        )  # fmt: skip
        t = {k: sum(r[k] for r in rows) for k in ("t_bare", "t_free", "t_doc")}
        print(
            f"time per page: bare {t['t_bare'] / len(rows):.2f} s, free {t['t_free'] / len(rows):.2f} s "
            f"({t['t_free'] / t['t_bare']:.2f}x), document {t['t_doc'] / len(rows):.2f} s "
            f"({t['t_doc'] / t['t_bare']:.2f}x)"
        )

        _, png, bgr = render("ocr_test.pdf", 0, args.dpi)
        norm = lambda s: " ".join(s.split())  # noqa: E731
        free, _ = service(png, "/ocr/image/simple", "free")
        b_text, _ = bare(bgr)
        print(
            f"ocr_test.pdf (scan) CER: service {Levenshtein.normalized_distance(norm(free['text']), OCR_TEST_TEXT):.3f}"
            f", bare {Levenshtein.normalized_distance(norm(b_text), OCR_TEST_TEXT):.3f}"
        )
        for name, pno in UNREADABLE:
            _, png, _ = render(name, pno, args.dpi)
            free, _ = service(png, "/ocr/image/simple", "free")
            print(f"{name} p{pno + 1}: {len(free['text'].split())} words, warnings {free['warnings']}")
        print(f"server peak RSS {peak_rss_mb(proc.pid):.0f} MB; CPU: {cpu_name()}, {os.cpu_count()} cores")
    finally:
        client.close()
        stop_service(proc)


if __name__ == "__main__":
    main()
