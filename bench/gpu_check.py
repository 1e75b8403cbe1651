"""Every route of the running service, checked for status, structure, token counts and timings.

Starts uvicorn (ENGINE, MODEL_PATH, LOAD_FORMAT from the environment or flags), waits for readiness, then
calls each route with real documents. With random weights (LOAD_FORMAT=dummy) the text is noise, so this
checks status codes and fields, not words. Prints one line per check and exits non-zero on any failure.

    python bench/gpu_check.py --engine vllm --model /tmp/dsocr --load-format dummy
    python bench/gpu_check.py --engine cpu        # the same checks on the CPU engine
    REMOTE_URLS=http://127.0.0.1:8001 python bench/gpu_check.py --engine remote   # a front over `vllm serve`
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path

import httpx
import pymupdf
from service import ROOT, start_service, stop_service

DOCS = ROOT / "bench" / "docs"  # small real documents that travel with the repo
results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    results.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}", flush=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--model", default="/tmp/dsocr")
    ap.add_argument("--load-format", default="dummy")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--startup-timeout", type=float, default=600)
    args = ap.parse_args()

    env = {
        "ENGINE": args.engine,
        "MODEL_PATH": args.model,
        "LOAD_FORMAT": args.load_format,
        "DATA_DIR": tempfile.mkdtemp(),
        "GPU_MEM_UTILIZATION": os.environ.get("GPU_MEM_UTILIZATION", "0.85"),
    }
    log = Path(tempfile.gettempdir()) / "gpu_check_server.log"
    t0 = time.time()
    server, base = start_service(env, log=log, wait_for="/health", timeout=args.startup_timeout)
    c = httpx.Client(base_url=base, timeout=300)
    try:
        check("/health answers while the engine loads", True, f"{time.time() - t0:.1f} s after start")
        ready = c.get("/ready")
        check("/ready says 503 before the engine is up (or 200)", ready.status_code in (200, 503), ready.text[:120])
        while c.get("/ready").status_code != 200:
            if time.time() - t0 > args.startup_timeout or server.poll() is not None:
                raise SystemExit(f"engine did not start: {c.get('/ready').text}")
            time.sleep(1)
        root = c.get("/").json()
        check("engine up", root["engine"]["ready"], f"{time.time() - t0:.0f} s; {json.dumps(root['engine'])[:400]}")
        check("all routers available", all(r["available"] for r in root["routers"].values()), str(root["routers"]))
        run_checks(c, args.max_tokens, root["engine"]["engine"])
    finally:
        stop_service(server)
    failed = [r for r in results if not r[1]]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


def run_checks(c: httpx.Client, max_tokens: int, engine: str) -> None:
    page = pymupdf.open(DOCS / "two_pages.pdf")[0].get_pixmap(dpi=144).tobytes("png")
    b64 = base64.b64encode(page).decode()
    pdf = (DOCS / "two_pages.pdf").read_bytes()
    mt = str(max_tokens)

    r = c.post("/generate", json={"prompt": "document", "image_base64": b64, "max_tokens": max_tokens})
    j = r.json()
    check(
        "/generate",
        r.status_code == 200 and j["usage"]["output_tokens"] > 0 and j["usage"]["prompt_tokens"] > 500,
        f"usage={j.get('usage')}",
    )
    r = c.post("/generate_with_file", files={"file": ("p.png", page)}, data={"prompt": "free", "max_tokens": mt})
    check("/generate_with_file", r.status_code == 200 and "result" in r.json(), r.text[:150])
    with c.stream(
        "POST", "/generate", json={"prompt": "free", "image_base64": b64, "max_tokens": max_tokens, "stream": True}
    ) as s:
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    check(
        "/generate stream=true (SSE)",
        s.status_code == 200 and events[-1] == "data: [DONE]" and len(events) >= 2,
        f"{len(events)} events",
    )
    for prompt in ("document", "ocr", "free", "markdown", "figure", "describe"):
        r = c.post("/ocr/image/advanced", files={"file": ("p.png", page)}, data={"prompt": prompt, "max_tokens": mt})
        j = r.json()
        ok = r.status_code == 200 and {"text", "markdown", "regions", "raw_output", "usage", "image_size"} <= j.keys()
        if engine == "cpu" and prompt in ("figure", "describe"):
            ok = r.status_code == 422  # the CPU engine says which engine can answer
        check(
            f"/ocr/image/advanced prompt={prompt}",
            ok,
            f"{r.status_code} tokens={j.get('usage', {}).get('output_tokens')}",
        )
    r = c.post(
        "/ocr/image/advanced",
        files={"file": ("p.png", page)},
        data={"prompt": "locate", "target": "Table", "max_tokens": mt},
    )
    check("/ocr/image/advanced locate", r.status_code == 200, r.text[:100])
    modes = c.get("/ocr/info").json()["modes"]  # the model's own: DeepSeek-OCR six, DeepSeek-OCR-2 two
    for mode in ("tiny", "small", "base", "large", "gundam_m"):
        r = c.post("/ocr/image/advanced", files={"file": ("p.png", page)}, data={"mode": mode, "max_tokens": mt})
        refused = r.status_code == 422 and r.json()["error"]["code"] == "mode_not_supported"
        check(f"/ocr/image/advanced mode={mode}", r.status_code == 200 if mode in modes else refused, r.text[:160])
    r = c.post("/ocr/image/simple", files={"file": ("p.png", page)})  # MAX_TOKENS default: the whole context
    check("/ocr/image/simple", r.status_code == 200 and "text" in r.json(), f"{r.status_code} {r.text[:300]}")
    r = c.post("/pdf/ocr", files={"file": ("d.pdf", pdf)}, data={"draw_layouts": "true", "max_tokens": mt})
    j = r.json()
    ok = r.status_code == 200 and j["pages_processed"] == 2 and j["usage"]["output_tokens"] > 0
    check(
        "/pdf/ocr (2 pages, layouts PDF)",
        ok and j["layouts_pdf"] is not None,
        f"{r.status_code} usage={j.get('usage')}",
    )
    r = c.post("/pdf/ocr/simple", files={"file": ("d.pdf", pdf)})
    check("/pdf/ocr/simple", r.status_code == 200 and r.json()["pages"] == 2, str(r.status_code))
    r = c.post("/batch/ocr", files=[("files", ("a.png", page)), ("files", ("d.pdf", pdf))], data={"max_tokens": mt})
    check("/batch/ocr", r.status_code == 200 and r.json()["succeeded"] == 2, str(r.status_code))
    r = c.post("/batch/ocr/download", files=[("files", ("a.png", page)), ("files", ("d.pdf", pdf))])
    names = zipfile.ZipFile(BytesIO(r.content)).namelist() if r.status_code == 200 else []
    check("/batch/ocr/download", "results.json" in names and "d/d.md" in names, str(names[:6]))
    r = c.post("/jobs", files=[("files", ("d.pdf", pdf))])
    job = r.json()
    while job.get("state") not in ("done", "failed"):
        time.sleep(0.5)
        job = c.get(f"/jobs/{job['job_id']}").json()
    check("/jobs (async PDF)", job["state"] == "done" and job["progress"]["pages_done"] == 2, str(job["progress"]))
    r = c.post("/invocations", json={"prompt": "<image>\\nFree OCR.", "image_base64": b64})
    check("/invocations image", r.status_code == 200 and "text" in r.json(), f"{r.status_code} {r.text[:300]}")
    r = c.post("/invocations", json={"pdf_base64": base64.b64encode(pdf).decode()})
    check("/invocations pdf", r.status_code == 200 and r.json()["pages"] == 2, str(r.status_code))
    models = c.get("/v1/models").json().get("data", [])
    check("/v1/models", len(models) == 1, str(models)[:150])
    image_part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}
    chat = {
        "model": models[0]["id"] if models else "m",
        "messages": [{"role": "user", "content": [image_part, {"type": "text", "text": "Free OCR."}]}],
        "max_tokens": max_tokens,
        "skip_special_tokens": False,
        "vllm_xargs": {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]},
    }
    r = c.post("/v1/chat/completions", json=chat)
    usage = r.json().get("usage") or {}
    check("/v1/chat/completions", r.status_code == 200 and usage.get("completion_tokens", 0) > 0, str(usage))
    streamed = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    with c.stream("POST", "/v1/chat/completions", json=streamed) as s:
        events = [line for line in s.iter_lines() if line.startswith("data: ")]
    check(
        "/v1/chat/completions stream=true",
        s.status_code == 200 and len(events) >= 4 and events[-1] == "data: [DONE]" and '"usage"' in events[-2],
        f"{len(events)} events",
    )
    check("/ping", c.get("/ping").status_code == 200)
    for router in ("ocr", "pdf", "batch", "jobs"):
        check(f"/{router}/status", c.get(f"/{router}/status").status_code == 200)
    r = c.post("/ocr/image/simple", files={"file": ("x.jpg", b"\xff\xd8\xff\xe0 truncated")})
    check("bad input is a 4xx", 400 <= r.status_code < 500, r.text[:120])


if __name__ == "__main__":
    main()
