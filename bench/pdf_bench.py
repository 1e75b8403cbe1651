"""PDF throughput and memory through the service (CPU engine) vs the OCR library called directly.

Builds an N-page PDF by repeating real pages, starts the service (uvicorn, CPU engine) on loopback,
and prints, from one run:
  baseline   RapidOCR called directly, page by page, on the same pages rendered with PyMuPDF
  sync       POST /pdf/ocr/simple (one request for the whole PDF)
  async      POST /jobs, then GET /jobs/{id} until done
pages/s for each, the ratios service/baseline, and the peak RSS (VmHWM) of the server and its workers.

    python bench/pdf_bench.py --pages 20
    python bench/pdf_bench.py --pages 300 --baseline-pages 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pymupdf
from service import ROOT, start_service, stop_service

DOCLING = ROOT.parent / "shared" / "testdata" / "docling"


def build_pdf(source: Path, pages: int, out: Path) -> Path:
    src = pymupdf.open(source)
    doc = pymupdf.open()
    while doc.page_count < pages:
        n = min(src.page_count, pages - doc.page_count)
        doc.insert_pdf(src, from_page=0, to_page=n - 1)
    doc.save(out)
    return out


def baseline(pdf: Path, pages: int, dpi: int) -> float:
    """Seconds for the naive script: render a page, OCR it, next page (the library's defaults)."""
    from rapidocr import RapidOCR

    engine = RapidOCR(params={"Global.log_level": "error"})
    doc = pymupdf.open(pdf)
    t0 = time.perf_counter()
    for i in range(pages):
        pix = doc[i].get_pixmap(dpi=dpi)
        img = np.frombuffer(pix.samples, np.uint8).reshape(pix.h, pix.w, pix.n)[:, :, ::-1]
        engine(np.ascontiguousarray(img))
    return time.perf_counter() - t0


def peak_rss_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident memory) of a process and of each of its children, in MB."""
    out = {}
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM"):
                    out["server" if p == pid else f"worker {p}"] = int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--baseline-pages", type=int, default=None, help="pages for the baseline (default: all)")
    ap.add_argument("--source", default=str(DOCLING / "multi_page.pdf"))
    ap.add_argument("--dpi", type=int, default=144)
    ap.add_argument("--prompt", default="free")
    ap.add_argument("--skip", default="", help="comma list of runs to skip: baseline,sync,async")
    args = ap.parse_args()
    skip = set(args.skip.split(","))

    tmp = Path(tempfile.mkdtemp(prefix="pdfbench-"))
    pdf = build_pdf(Path(args.source), args.pages, tmp / "long.pdf")
    print(f"{args.pages}-page PDF from {Path(args.source).name}: {pdf.stat().st_size / 1e6:.1f} MB, {args.dpi} dpi")

    results: dict[str, float] = {}
    if "baseline" not in skip:
        n = args.baseline_pages or args.pages
        results["baseline"] = n / baseline(pdf, n, args.dpi)

    env = {"ENGINE": "cpu", "DATA_DIR": str(tmp / "data"), "MAX_PDF_PAGES": str(max(500, args.pages))}
    server, base = start_service(env, timeout=600)
    client = httpx.Client(base_url=base, timeout=None)
    try:
        data = pdf.read_bytes()
        form = {"prompt": args.prompt, "dpi": str(args.dpi)}
        if "sync" not in skip:
            t0 = time.perf_counter()
            r = client.post("/pdf/ocr/simple", files={"file": ("long.pdf", data)}, data=form)
            r.raise_for_status()
            assert r.json()["pages"] == args.pages
            results["sync"] = args.pages / (time.perf_counter() - t0)
            print(f"sync done; peak RSS so far: {peak_rss_mb(server.pid)}")
        if "async" not in skip:
            t0 = time.perf_counter()
            job = client.post("/jobs", files={"files": ("long.pdf", data)}, data=form).json()
            while (state := client.get(f"/jobs/{job['job_id']}").json())["state"] not in ("done", "failed"):
                time.sleep(0.5)
            assert state["state"] == "done" and state["progress"]["pages_done"] == args.pages, state
            results["async"] = args.pages / (time.perf_counter() - t0)
        rss = peak_rss_mb(server.pid)
    finally:
        stop_service(server)

    print(f"\n{'run':10} {'pages/s':>8} {'vs baseline':>12}")
    for name, pps in results.items():
        ratio = f"{pps / results['baseline']:.2f}x" if "baseline" in results else "-"
        print(f"{name:10} {pps:>8.3f} {ratio:>12}")
    print("peak RSS (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))


if __name__ == "__main__":
    main()
