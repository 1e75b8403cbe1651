"""End-to-end GPU throughput: N concurrent HTTP requests through the service vs the naive LLM.generate loop.

Pages are the same synthetic A4 pages (1240x1754, text lines) as ../shared/gpu/bench_dummy.py, sent as PNG
to POST /generate with the repetition guard on, ignore_eos and a fixed max_tokens, all at once. Prints
pages/s and output tokens/s for the service; run bench_dummy.py in the same call for the baseline.

    python bench/gpu_bench.py --model /tmp/dsocr --pages 256 --out-tokens 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw
from service import start_service, stop_service


def synthetic_page(p: int, w: int = 1240, h: int = 1754) -> bytes:
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    for y in range(60, h - 60, 28):
        d.text((60, y), f"Page {p} line {y} lorem ipsum dolor sit amet consectetur {p * y}", fill="black")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


async def send_all(base: str, bodies: list[dict]) -> tuple[float, list[dict]]:
    limits = httpx.Limits(max_connections=len(bodies) + 8, max_keepalive_connections=len(bodies) + 8)
    async with httpx.AsyncClient(base_url=base, timeout=3600, limits=limits) as c:
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(c.post("/generate", json=b) for b in bodies))
        dt = time.perf_counter() - t0
    bad = [r for r in rs if r.status_code != 200]
    if bad:
        raise SystemExit(f"{len(bad)} failed: {bad[0].status_code} {bad[0].text[:300]}")
    return dt, [r.json() for r in rs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/dsocr")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--out-tokens", type=int, default=1000)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--workers", type=int, default=16, help="NUM_WORKERS: preprocessing threads")
    ap.add_argument("--ngram-impl", default="batched")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--extra-env", default="", help="KEY=VALUE,... passed to the server")
    args = ap.parse_args()

    env = {
        "ENGINE": "vllm",
        "MODEL_PATH": args.model,
        "LOAD_FORMAT": "dummy",
        "DATA_DIR": tempfile.mkdtemp(),
        "MAX_CONCURRENCY": str(args.max_num_seqs),
        "GPU_MEM_UTILIZATION": "0.9",
        "NUM_WORKERS": str(args.workers),
        "NGRAM_IMPL": args.ngram_impl,
        "MAX_UPLOAD_BYTES": str(64 << 20),
        "LOG_LEVEL": "WARNING",
    }
    env.update(kv.split("=", 1) for kv in args.extra_env.split(",") if kv)
    log = Path(tempfile.gettempdir()) / "gpu_bench_server.log"
    t0 = time.time()
    server, base = start_service(env, log=log, timeout=900, uvicorn_args=("--log-level", "warning"))
    try:
        info = httpx.get(f"{base}/").json()["engine"]
        print(f"service up in {time.time() - t0:.0f} s: {json.dumps(info)}", flush=True)
        pngs = [base64.b64encode(synthetic_page(p)).decode() for p in range(args.pages)]
        body = {
            "prompt": "<image>\n<|grounding|>Convert the document to markdown. ",
            "max_tokens": args.out_tokens,
            "ignore_eos": True,
        }
        asyncio.run(send_all(base, [{**body, "image_base64": pngs[0]}, {**body, "image_base64": pngs[1]}]))  # warm-up
        for i in range(args.passes):
            dt, outs = asyncio.run(send_all(base, [{**body, "image_base64": b} for b in pngs]))
            out_tok = sum(o["usage"]["output_tokens"] for o in outs)
            prompt_tok = sum(o["usage"]["prompt_tokens"] for o in outs)
            prep = sorted(o["usage"]["timings"].get("preprocess", 0) for o in outs)
            res = {
                "pass_no": i,
                "kind": f"service-http-{args.ngram_impl}",
                "pages": args.pages,
                "seconds": round(dt, 2),
                "pages_per_s": round(args.pages / dt, 3),
                "out_tok_per_s": round(out_tok / dt, 1),
                "prompt_tokens_per_page": prompt_tok // args.pages,
                "out_tokens_per_page": out_tok // args.pages,
                "preprocess_p50_s": prep[len(prep) // 2],
                "max_num_seqs": args.max_num_seqs,
            }
            print("RESULT", json.dumps(res), flush=True)
    finally:
        stop_service(server)


if __name__ == "__main__":
    main()
