"""How the host's CPUs serve the per-page work of vLLM's DeepSeek-OCR API processes, alone and side by side.

Each worker process replays one page's input processing as a vLLM API process does it (PNG decode, the
processor's Gundam resize + crops and padded global view, uint8 views stacked and serialised: see
bench/processor_cost.py) for `--pages` pages; N workers run at once for each N of `--procs`. Printed per N: the
wall ms per page of the slowest worker, CPU ms per page, minor page faults per page, and the same with glibc's
malloc keeping freed memory (`MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`, read at process start), so
fresh pages are not faulted in for every image. The ratio of N workers to one says how far the host's cores
scale (hyperthreads, shared caches); the malloc rows say what page faults cost on this kernel.

    python bench/cpu_scaling.py --procs 1,4,8,14 --pages 20
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import pickle
import resource
import sys
import time
from pathlib import Path

MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _work(args: tuple[int, bytes]) -> tuple[float, float, int]:
    pages, png = args
    import torch
    from PIL import Image, ImageOps

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from processor_cost import to_uint8

    torch.set_num_threads(1)

    def one() -> bytes:
        im = Image.open(io.BytesIO(png))
        im.load()
        im = im.convert("RGB")
        resized = im.resize((1280, 1920))
        tiles = [resized.crop((i % 2 * 640, i // 2 * 640, i % 2 * 640 + 640, i // 2 * 640 + 640)) for i in range(6)]
        glob = ImageOps.pad(im, (1024, 1024), color=(127, 127, 127))
        views = (torch.stack([to_uint8(glob)]), torch.stack([to_uint8(t) for t in tiles]))
        return pickle.dumps(views, protocol=5)

    one()
    r0, t0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
    for _ in range(pages):
        one()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return 1000 * wall / pages, 1000 * cpu / pages, (r1.ru_minflt - r0.ru_minflt) // pages


def run(procs: int, pages: int, png: bytes, env: dict[str, str]) -> dict:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(procs) as pool:
            out = pool.map(_work, [(pages, png)] * procs)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {
        "procs": procs,
        "malloc_keep": bool(env),
        "wall_ms_page_max": round(max(o[0] for o in out), 1),
        "cpu_ms_page_mean": round(sum(o[1] for o in out) / procs, 1),
        "faults_page_mean": sum(o[2] for o in out) // procs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,4,8,14")
    ap.add_argument("--pages", type=int, default=20)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from processor_cost import page

    buf = io.BytesIO()
    page().save(buf, "PNG")
    print(json.dumps({"cpus": os.cpu_count(), "png_bytes": len(buf.getvalue())}))
    for n in (int(x) for x in args.procs.split(",")):
        for env in ({}, MALLOC_KEEP):
            print("SCALING", json.dumps(run(n, args.pages, buf.getvalue(), env)), flush=True)


if __name__ == "__main__":
    main()
