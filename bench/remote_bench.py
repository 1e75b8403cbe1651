"""ENGINE=remote on loopback: what the front costs, and failover under load with a dead and a killed backend.

Starts two CPU-engine backends (A, B) and a remote front with REMOTE_URLS=A,B,<dead URL>, then prints:
1. the front's own work per page (page -> data URL), PNG and JPEG, against decoding the same page;
2. load straight at backend A, then through the front (two backends): throughput and latency ratios;
   and the CPU seconds per page the front and the backends spend (robust on a shared machine);
3. load through the front while backend B is killed part-way: errors (pages retried elsewhere),
   and how long until the front stops sending to B.

    python bench/remote_bench.py --requests 24 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pymupdf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import run  # noqa: E402
from service import start_service, stop_service  # noqa: E402

from engines.remote_engine import data_url  # noqa: E402


def cpu_s(proc) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_page_ms(fn, repeat: int = 10) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round((time.perf_counter() - t0) / repeat * 1000, 1)


def encode_costs(png: bytes) -> dict:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return {
        "page_px": list(image.size),
        "decode_png_ms": per_page_ms(lambda: Image.open(io.BytesIO(png)).convert("RGB")),
        "data_url_png_ms": per_page_ms(lambda: data_url(image, "png")),
        "data_url_jpeg_ms": per_page_ms(lambda: data_url(image, "jpeg")),
        "data_url_png_kb": len(data_url(image, "png")) // 1024,
        "data_url_jpeg_kb": len(data_url(image, "jpeg")) // 1024,
    }


async def load_with_kill(front: str, png: bytes, n: int, c: int, victim, victim_url: str) -> dict:
    """Load through the front; kill `victim` once a third of the requests have been sent."""
    task = asyncio.create_task(run(front, png, n, c))
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            b = {b["url"]: b for b in (await client.get(f"{front}/")).json()["engine"]["backends"]}[victim_url]
            if b["completed"] >= max(1, n // 6):
                break
            await asyncio.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        t_kill = time.perf_counter()
        while b["state"] == "up":
            b = {b["url"]: b for b in (await client.get(f"{front}/")).json()["engine"]["backends"]}[victim_url]
            await asyncio.sleep(0.02)
        taken_out_s = time.perf_counter() - t_kill
    stats = await task
    return {**stats, "victim_taken_out_after_s": round(taken_out_s, 2), "victim_failures": b["failures"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    png = pymupdf.open(ROOT.parent / "shared/testdata/docling/ocr_test.pdf")[0].get_pixmap(dpi=144).tobytes("png")
    print(json.dumps({"front_work_per_page": encode_costs(png)}))
    tmp = Path(tempfile.mkdtemp())
    env = {"ENGINE": "cpu", "NUM_WORKERS": "1", "CPU_ENGINE_THREADS": "1"}  # one core per backend
    procs = []
    try:
        a, base_a = start_service({**env, "DATA_DIR": str(tmp / "a")})
        procs.append(a)
        b, base_b = start_service({**env, "DATA_DIR": str(tmp / "b")})
        procs.append(b)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        front_env = {"ENGINE": "remote", "REMOTE_URLS": f"{base_a},{base_b},{dead}", "REMOTE_HEALTH_INTERVAL_S": "1"}
        front, base_f = start_service({**front_env, "NUM_WORKERS": "1", "DATA_DIR": str(tmp / "f")})
        procs.append(front)
        n, c = args.requests, args.concurrency
        direct = asyncio.run(run(base_a, png, n, c))
        print(json.dumps({"direct_to_backend_A": direct}))
        before = [cpu_s(p) for p in (front, a, b)]
        via = asyncio.run(run(base_f, png, n, c))
        used = [round((cpu_s(p) - t) / n, 3) for p, t in zip((front, a, b), before, strict=True)]
        print(json.dumps({"through_front_A_B_dead": via}))
        # CPU time per page does not depend on how busy the machine is, unlike wall-clock throughput.
        print(json.dumps({"cpu_s_per_page": {"front": used[0], "backends": round(used[1] + used[2], 3)}}))
        print(json.dumps({"front_vs_direct_throughput": round(via["requests_per_s"] / direct["requests_per_s"], 2)}))
        killed = asyncio.run(load_with_kill(base_f, png, n, c, b, base_b))
        print(json.dumps({"through_front_B_killed_midway": killed}))
    finally:
        for p in procs:
            if p.poll() is None:
                stop_service(p, grace=10)


if __name__ == "__main__":
    main()
