"""Load from a second process on loopback: N OCR requests, C at a time, every answer checked.

Starts the service (CPU engine) unless --url is given, sends the scanned test page N times with C
concurrent clients, and prints errors, wrong answers, throughput and p50/p95 latency.

    python bench/load.py --requests 200 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pymupdf
from rapidfuzz.distance import Levenshtein

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
TRUTH = "Docling bundles PDF document conversion to JSON and Markdown in an easy self contained package"


async def run(base: str, png: bytes, n: int, c: int) -> dict:
    sem = asyncio.Semaphore(c)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    wrong = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal wrong
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.post("/ocr/image/simple", files={"file": ("scan.png", png)})
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            elif Levenshtein.normalized_distance(" ".join(r.json()["text"].split()), TRUTH) > 0.1:
                wrong += 1

    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(n)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests": n, "concurrency": c, "errors": errors, "wrong_answers": wrong, "seconds": round(wall, 1),
        "requests_per_s": round(n / wall, 2), "p50_s": round(statistics.median(lat), 2) if lat else None,
        "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 2) if lat else None,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    png = pymupdf.open(ROOT.parent / "shared/testdata/docling/ocr_test.pdf")[0].get_pixmap(dpi=144).tobytes("png")
    proc = None
    base = args.url
    if not base:
        from conftest import start_server

        proc, base = start_server(Path(tempfile.mkdtemp()))
    try:
        print(asyncio.run(run(base, png, args.requests, args.concurrency)))
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
