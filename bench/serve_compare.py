"""`vllm serve` with this service's vLLM plugin (every mode) and batched guard, N API servers: the peer a
user would run, measured straight through the openai client and through this service as a thin front
(ENGINE=remote), on the same work unit as bench/gpu_bench.py (256 A4 pages, Gundam, 1000 tokens, guard on).

    python bench/serve_compare.py --api-servers 8
    python bench/serve_compare.py --engines 2 --api-servers 4   # two engines sharing the GPU, 0.45 of it each

With --engines K, K `vllm serve` instances share the one GPU (each its own EngineCore process, 0.9/K of the GPU's
memory), pages go round-robin to them, and the front gets all K as REMOTE_URLS: whether one EngineCore's CPU
loop (not the GPU) is what caps the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gpu_bench import vllm_front, vllm_time_sums
from gpu_watch import CpuSplit, GpuBusy
from pages import page_png

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from config import Settings  # noqa: E402
from engines.vllm_serve_engine import serve_argv, serve_env, write_chat_template  # noqa: E402

GUARD = {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}


def start_vllm(model: str, port: int, api_servers: int, log: Path, gpu_share: float = 0.9) -> subprocess.Popen:
    """`vllm serve` exactly as VLLM_API_SERVERS=N runs it (engines/vllm_serve_engine.serve_argv), dummy weights."""
    settings = Settings(
        _env_file=None, model_path=model, load_format="dummy", max_concurrency=256, gpu_mem_utilization=gpu_share,
        max_model_len=8192, mm_cache_gb=0, vllm_api_servers=api_servers,
    )  # fmt: skip
    cmd = serve_argv(settings, port, write_chat_template(Path("/tmp")))
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=serve_env(os.environ), cwd=ROOT)
    t0 = time.time()
    while time.time() - t0 < 600:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited {proc.returncode}; see {log}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                print(f"vllm serve up in {time.time() - t0:.0f} s ({api_servers} API servers)", flush=True)
                return proc
        except OSError:
            time.sleep(2)
    proc.kill()
    raise SystemExit("vllm serve did not come up")


def time_sums(ports: list[int]) -> dict[str, float]:
    """vLLM's per-request time histograms, summed over every instance (gpu_bench.scrape reads them all)."""
    return vllm_time_sums(" ".join(f"http://127.0.0.1:{port}" for port in ports))


async def peer_burst(ports: list[int], model: str, pages: int, out_tokens: int, passes: int = 1) -> list[dict]:
    import httpx
    from openai import AsyncOpenAI

    clients = [
        AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=3600,
            http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=1024), timeout=3600),
        )
        for port in ports
    ]  # fmt: skip
    urls = ["data:image/png;base64," + base64.b64encode(page_png(p)).decode() for p in range(pages)]
    extra = {"ignore_eos": True, "skip_special_tokens": False, "vllm_xargs": GUARD}

    async def one(url: str, k: int = 0) -> int:
        r = await clients[k % len(clients)].chat.completions.create(
            model=model, max_tokens=out_tokens, temperature=0.0, extra_body=extra,
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "<|grounding|>Convert the document to markdown. "}]}],
        )  # fmt: skip
        return r.usage.completion_tokens

    await asyncio.gather(*(one(urls[0], k) for k in range(len(clients))))
    rows = []
    for i in range(passes):
        before = time_sums(ports)
        with GpuBusy() as busy, CpuSplit(os.getpid()) as cpu:
            t0 = time.perf_counter()
            toks = await asyncio.gather(*(one(u, k) for k, u in enumerate(urls)))
            dt = time.perf_counter() - t0
        rows.append({"pass_no": i, "pages": pages, "seconds": round(dt, 2), "pages_per_s": round(pages / dt, 3),
                     "out_tokens_per_page": sum(toks) // pages, **busy.summary(), **cpu.summary(),
                     **vllm_front(before, time_sums(ports))})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="/tmp/dsocr")
    ap.add_argument("--api-servers", type=int, default=8)
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--out-tokens", type=int, default=1000)
    ap.add_argument("--port", type=int, default=8200)
    ap.add_argument("--engines", type=int, default=1, help="vllm serve instances sharing the GPU")
    ap.add_argument("--front-phases", default="modes,burst")
    ap.add_argument("--skip-peer", action="store_true", help="only this service as the front")
    ap.add_argument("--skip-front", action="store_true", help="only the peer (vllm serve through the openai client)")
    ap.add_argument("--passes", type=int, default=1, help="peer bursts, one after another")
    args = ap.parse_args()
    ports = [args.port + k for k in range(args.engines)]
    logs = [Path(f"/tmp/vllm_serve{k or ''}.log") for k in range(args.engines)]
    procs: list[subprocess.Popen] = []
    try:
        for port, log in zip(ports, logs, strict=True):  # one at a time: each profiles the memory left to it
            procs.append(start_vllm(args.model, port, args.api_servers, log, round(0.9 / args.engines, 3)))
        if not args.skip_peer:
            kind = f"vllm-serve-{args.api_servers}-api-batched-guard-x{args.engines}"
            for peer in asyncio.run(peer_burst(ports, args.model, args.pages, args.out_tokens, args.passes)):
                print("RESULT", json.dumps({"kind": kind, "engines": args.engines, **peer}), flush=True)
        if args.skip_front:
            return
        urls = " ".join(f"http://127.0.0.1:{port}" for port in ports)  # space: --extra-env splits on commas
        env = f"REMOTE_URLS={urls},REMOTE_CONCURRENCY={512 * args.engines}"
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--engine", "remote", "--phases", args.front_phases,
             "--pages", str(args.pages), "--out-tokens", str(args.out_tokens), "--passes", "1",
             "--label", f"remote-front-{args.api_servers}-api-x{args.engines}", "--extra-env", env],
            check=False,
        )  # fmt: skip
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        os.system(f"grep -iE 'error|warn|plugin' {logs[0]} | grep -v 'deprecat' | head -15")


if __name__ == "__main__":
    main()
