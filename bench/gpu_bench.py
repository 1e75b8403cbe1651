"""The service on the GPU, end to end over HTTP: one server start, then the phases asked for.

Pages are synthetic A4 pages (1240x1754, text lines), like ../shared/gpu/bench_dummy.py, sent as PNG to
POST /generate with the repetition guard on, ignore_eos and a fixed max_tokens. Phases (--phases):
  modes       every mode x a tall, a wide and a square page: prompt tokens must equal our tile arithmetic
              (usage.prompt_tokens - tiles.image_tokens is the same text-token count for every request)
  mixed       every mode at once, 8 requests each: images of different sizes share engine steps
  mode_rates  pages/s per mode (--mode-pages pages at once, --out-tokens each)
  burst       --pages pages at once in Gundam, --passes times: pages/s, the preprocessing wait p50/p90 (the
              in-process engine's usage.timings), vLLM's mean time before its engine queue (from its histograms:
              input processing, also inside a managed `vllm serve`), nvidia-smi's GPU busy %, the CPU seconds
              of each process (API servers, EngineCore, this service) and the host's busy share, the client
              connections each API server holds 2 s in, a timeline of the requests admitted and pages held by
              this service and vLLM's running/waiting counts (every 0.25 s for 6 s), the seconds until 10/50/90%
              of the pages had reached vLLM's engine (to_engine_p*_s); with --profile-s, py-spy samples a
              process (this service: every thread; vLLM's: every busy thread) during
              the first pass (--profile-target: this service, an API server, the EngineCore)
  soak        --soak-requests requests, --soak-concurrency at a time, 10% of clients leave early: status
              counts, vLLM's running requests and KV-cache use afterwards, API-process RSS start/end
  death       a burst, then vLLM's EngineCore process is killed: in-flight answers, /ready, process exit
Prints one RESULT line (JSON) per measurement. Works on the CPU engine too (--engine cpu) for a dry run.

    python bench/gpu_bench.py --model /tmp/dsocr --phases modes,mode_rates,burst,soak,death
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
from gpu_watch import CpuSplit, GpuBusy, engine_core_pids, start_profile, titled_pids
from pages import page_png
from pyspy_summary import report
from service import start_service, stop_service

PROMPT = "<image>\n<|grounding|>Convert the document to markdown. "
MIXED_TIMEOUT_S = 150  # a mixed-mode request still unanswered by then counts as hung (ReadTimeout)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def result(**kw) -> None:
    print("RESULT", json.dumps(kw), flush=True)


def client(base: str, n: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    return httpx.AsyncClient(base_url=base, timeout=3600, limits=limits)


async def send_all(base: str, bodies: list[dict]) -> tuple[float, list[dict]]:
    """POST every body at once; the clock runs from the first send (bodies are JSON-encoded before it, as a
    client holding its pages ready would: ~1 ms each for an A4 page's base64, time that is not the service's)."""
    payloads = [json.dumps(b).encode() for b in bodies]
    headers = {"content-type": "application/json"}
    async with client(base, len(bodies)) as c:
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(c.post("/generate", content=p, headers=headers) for p in payloads))
        dt = time.perf_counter() - t0
    bad = [r for r in rs if r.status_code != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} failed: {bad[0].status_code} {bad[0].text[:300]}")
    return dt, [r.json() for r in rs]


def send_apart(base: str, bodies: list[dict]) -> tuple[float, list[dict]]:
    """send_all in a forked process. The burst's samplers (timeline scrapes, GPU and CPU meters) are threads of
    this process: sharing its GIL with them, the client's own uploads started ~1.2 s late on an H100 host."""
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            sender.send(asyncio.run(send_all(base, bodies)))
        except Exception as e:  # the parent raises it
            sender.send(RuntimeError(f"{type(e).__name__}: {e}"))

    proc = ctx.Process(target=child)
    proc.start()
    out = receiver.recv()
    proc.join()
    if isinstance(out, Exception):
        raise out
    return out


def rate(kind: str, pages: int, dt: float, outs: list[dict], **extra) -> None:
    prep = sorted(o["usage"]["timings"].get("preprocess", 0) for o in outs)
    result(
        kind=kind, pages=pages, seconds=round(dt, 2), pages_per_s=round(pages / dt, 3),
        out_tok_per_s=round(sum(o["usage"]["output_tokens"] for o in outs) / dt, 1),
        prompt_tokens_per_page=sum(o["usage"]["prompt_tokens"] for o in outs) // pages,
        out_tokens_per_page=sum(o["usage"]["output_tokens"] for o in outs) // pages,
        preprocess_p50_s=prep[len(prep) // 2], preprocess_p90_s=prep[int(len(prep) * 0.9)], **extra,
    )  # fmt: skip


def phase_modes(base: str, modes: list[str]) -> None:
    pages = {"tall": page_png(1), "wide": page_png(2, 1754, 1240), "square": page_png(3, 1400, 1400)}
    rows, text_tokens = [], set()
    with httpx.Client(base_url=base, timeout=600) as c:
        for mode in modes:
            for shape, png in pages.items():
                body = {"prompt": "free", "image_base64": b64(png), "mode": mode, "max_tokens": 4}
                r = c.post("/generate", json=body)
                if r.status_code != 200:
                    rows.append({"mode": mode, "page": shape, "status": r.status_code, "error": r.text[:200]})
                    continue
                o = r.json()
                ours = o["tiles"]["image_tokens"]
                text_tokens.add(o["usage"]["prompt_tokens"] - ours)
                rows.append({"mode": mode, "page": shape, "tiles": f"{o['tiles']['tiles_w']}x{o['tiles']['tiles_h']}",
                             "prompt_tokens": o["usage"]["prompt_tokens"], "image_tokens_ours": ours})  # fmt: skip
    for row in rows:
        print("MODE", json.dumps(row), flush=True)
    ok = len(text_tokens) == 1 and all("error" not in r for r in rows)
    result(kind="modes_token_check", ok=ok, requests=len(rows), text_tokens=sorted(text_tokens))


def phase_mixed(base: str, modes: list[str], per_mode: int) -> None:
    """Every mode at once (`per_mode` requests each, tall and wide pages): requests of different modes share
    engine steps, so their images reach the encoder in one batch of different sizes."""
    pngs = [page_png(1), page_png(2, 1754, 1240)]
    bodies = [{"prompt": "free", "image_base64": b64(pngs[i % 2]), "mode": m, "max_tokens": 8}
              for m in modes for i in range(per_mode)]  # fmt: skip

    async def go() -> list[httpx.Response | BaseException]:
        async with client(base, len(bodies)) as c:
            posts = (c.post("/generate", json=b, timeout=MIXED_TIMEOUT_S) for b in bodies)
            return await asyncio.gather(*posts, return_exceptions=True)

    answers = asyncio.run(go())
    rs = [r for r in answers if isinstance(r, httpx.Response)]
    codes: dict[str, int] = {}
    for r in answers:
        if not isinstance(r, httpx.Response):
            codes[type(r).__name__] = codes.get(type(r).__name__, 0) + 1
    text_tokens: set[int] = set()
    for r in rs:
        codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
        if r.status_code == 200:
            o = r.json()
            text_tokens.add(o["usage"]["prompt_tokens"] - o["tiles"]["image_tokens"])
    ok = codes == {"200": len(bodies)} and len(text_tokens) == 1
    bad = next((r.text[:300] for r in rs if r.status_code != 200), None)
    result(kind="modes_mixed", ok=ok, requests=len(bodies), statuses=codes, text_tokens=sorted(text_tokens), error=bad)


def phase_mode_rates(base: str, modes: list[str], pages: int, out_tokens: int) -> None:
    pngs = [b64(page_png(p)) for p in range(pages)]
    for mode in modes:
        body = {"prompt": PROMPT, "max_tokens": out_tokens, "ignore_eos": True, "mode": mode}
        try:
            dt, outs = asyncio.run(send_all(base, [{**body, "image_base64": b} for b in pngs]))
            rate(f"mode-{mode}", pages, dt, outs, mode=mode)
        except Exception as e:
            result(kind=f"mode-{mode}", error=str(e)[:300])


def keep_child_logs(children: list[dict], out: Path, keep: int = 1 << 20) -> None:
    """Copy the last `keep` bytes of each managed `vllm serve` child's log (its entry's "log") beside the service's
    log (the child logs at INFO: which MoE config it read, its warnings), as vllm_serve_N.log."""
    for n, path in enumerate(p for p in (c.get("log") for c in children) if p):
        src = Path(path)
        if src.is_file() and src.parent != out:
            with src.open("rb") as f:
                f.seek(max(0, src.stat().st_size - keep))
                (out / f"vllm_serve_{n}.log").write_bytes(f.read())


VLLM_TIMES = (
    "e2e_request_latency", "request_queue_time", "request_inference_time", "time_to_first_token",
    "request_prefill_time", "request_decode_time",
)  # fmt: skip


def scrape(bases: str) -> str:
    """The Prometheus /metrics pages of one base URL or several (space-separated: VLLM_INSTANCES children), one
    after another, so `metric` sums each series over all of them ("" for one that does not answer)."""
    texts = []
    for base in bases.split():
        try:
            texts.append(httpx.get(f"{base}/metrics", timeout=30).text)
        except httpx.HTTPError:
            pass
    return "\n".join(texts)


def metric(text: str, name: str) -> float | None:
    """The sum of a metric's series (every label set) on a scraped page, or None if it is not there."""
    vals = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)]
    return sum(vals) if vals else None


FRONT_HISTOGRAM = "ocr_vllm_front_seconds"  # engines/vllm_front_stats.py, a vLLM stat-logger plugin
PREP_HISTOGRAM = "ocr_vllm_prep_seconds"  # its API-process part: page file load to the processor's output
HISTOGRAMS = {"front": FRONT_HISTOGRAM, "prep": PREP_HISTOGRAM}


def vllm_time_sums(metrics_url: str) -> dict[str, float]:
    """Sums and counts of vLLM's per-request time histograms (its /metrics: in this service's in-process, the
    managed `vllm serve`'s otherwise), and the buckets of our front and prep histograms ("front le=<bound>")."""
    text = scrape(metrics_url)
    if not text:
        return {}
    sums = {f"{name}_{part}": metric(text, f"vllm:{name}_seconds_{part}") or 0.0
            for name in VLLM_TIMES for part in ("sum", "count")}  # fmt: skip
    for short, name in HISTOGRAMS.items():
        for m in re.finditer(rf'^{name}_bucket{{[^}}]*le="([^"]+)"[^}}]*}} ([0-9.eE+-]+)$', text, re.M):
            key = f"{short} le={m.group(1)}"
            sums[key] = sums.get(key, 0.0) + float(m.group(2))
    return sums


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """A quantile from cumulative histogram counts {upper bound: count}, interpolated within its bucket (as
    Prometheus' histogram_quantile does); None without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if not total:
        return None
    want, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= want:
            if bound == float("inf"):
                return lower
            return round(lower + (bound - lower) * (want - below) / max(count - below, 1e-9), 3)
        lower, below = bound, count
    return lower


def vllm_front(before: dict[str, float], after: dict[str, float]) -> dict:
    """Mean seconds per request, from vLLM's histograms over one pass. vLLM stamps arrival when its renderer
    starts, so e2e - queue - inference is the time before the engine-core queue: input processing and the hop."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    n = d.get("e2e_request_latency_count", 0)
    if not n:
        return {}
    mean = {k: d[f"{k}_sum"] / n for k in VLLM_TIMES}
    front = mean["e2e_request_latency"] - mean["request_queue_time"] - mean["request_inference_time"]
    quantiles = {}
    for short in HISTOGRAMS:
        buckets = {float(k.split("=")[1]): v for k, v in d.items() if k.startswith(f"{short} le=")}
        if buckets:
            quantiles |= {f"vllm_{short}_p{int(q * 100)}_s": bucket_quantile(buckets, q) for q in (0.5, 0.9)}
    return {"vllm_front_mean_s": round(front, 3), **quantiles,
            "vllm_ttft_mean_s": round(mean["time_to_first_token"], 3),
            "vllm_queue_mean_s": round(mean["request_queue_time"], 3),
            "vllm_prefill_mean_s": round(mean["request_prefill_time"], 3),
            "vllm_decode_mean_s": round(mean["request_decode_time"], 3)}  # fmt: skip


# Every 0.25 s while the pages reach vLLM, then sparser while they are decoded.
TIMELINE_S = (*(i / 4 for i in range(1, 25)), 8, 10, 12, 16, 20, 24)


def timeline(base: str, metrics_url: str, out: list) -> threading.Thread:
    """Samples, TIMELINE_S after now, [t, requests this service has admitted, pages its engine holds, vLLM
    running, vLLM waiting] (t: when the sample was read): how fast pages reach vLLM's engine under a burst."""
    t0 = time.perf_counter()

    def run() -> None:
        for at in TIMELINE_S:
            time.sleep(max(0.0, at - (time.perf_counter() - t0)))
            try:
                engine = httpx.get(f"{base}/", timeout=2).json()["engine"]
                admitted, held = engine.get("admitted"), engine["in_flight"]
            except (httpx.HTTPError, ValueError, KeyError):
                admitted = held = None
            text = scrape(metrics_url)
            running, waiting = (metric(text, f"vllm:num_requests_{k}") for k in ("running", "waiting"))
            out.append([round(time.perf_counter() - t0, 2), admitted, held, running, waiting])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def reached_engine(samples: list, pages: int, share: float = 0.5) -> float | None:
    """Seconds into the burst when `share` of its pages had reached vLLM's engine (running + waiting; none
    finishes this early), interpolated between samples: with share 0.5, the p50 wait before the engine's queue,
    everything in front of it included (upload, this service, vLLM's API processes)."""
    want, last = share * pages, (0.0, 0.0)
    for t, *_, running, waiting in samples:
        if running is None or waiting is None:
            continue
        have = running + waiting
        if have >= want:
            t0, n0 = last
            return round(t0 + (t - t0) * (want - n0) / max(have - n0, 1e-9), 2)
        last = (t, have)
    return None


def profiled_pid(pid: int, target: str) -> int:
    """The process --profile-target names: this service ("front"), or its vLLM child's first API server or
    EngineCore (the service itself when there is no such child)."""
    if target == "front":
        return pid
    found = titled_pids(pid, {"api": "APIServer_0", "core": "EngineCore"}[target])
    return found[0] if found else pid


def phase_burst(
    base: str, pages: int, out_tokens: int, passes: int, label: str, pid: int, profile_s: float, metrics_url: str,
    profile_target: str = "front", serve_port: int | None = None,
) -> None:  # fmt: skip
    pngs = [b64(page_png(p)) for p in range(pages)]
    body = {"prompt": PROMPT, "max_tokens": out_tokens, "ignore_eos": True, "mode": "gundam"}
    prof = Path(os.environ.get("OUT", tempfile.gettempdir())) / f"pyspy_{label}_{profile_target}.txt"
    gil = False  # every busy thread (PIL and zlib release the GIL: GIL holders alone missed this service's decodes)
    for i in range(passes):
        spy = start_profile(profiled_pid(pid, profile_target), profile_s, 3, prof, gil) if profile_s and not i else None
        before, samples = vllm_time_sums(metrics_url), []
        with GpuBusy() as busy, CpuSplit(pid, serve_port) as cpu:
            sampler = timeline(base, metrics_url, samples)
            dt, outs = send_apart(base, [{**body, "image_base64": b} for b in pngs])
        sampler.join(timeout=15)
        front = vllm_front(before, vllm_time_sums(metrics_url))
        reached = {f"to_engine_p{int(q * 100)}_s": reached_engine(samples, pages, q) for q in (0.1, 0.5, 0.9)}
        engine = httpx.get(f"{base}/").json()["engine"]
        files = {k: v for k, v in (engine.get("page_files") or {}).items() if k != "folder"}  # counts, connector
        rate(f"service-http-{label}", pages, dt, outs, pass_no=i, **busy.summary(), **front, **reached,
             **cpu.summary(), page_files=files, timeline=samples)  # fmt: skip
        print("ENGINE", json.dumps(engine.get("api_processes")), flush=True)
        if spy is not None:
            spy.wait(timeout=profile_s + 30)
            print(report(prof, 100, profile_s, gil=gil), flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


async def soak(base: str, n: int, conc: int, out_tokens: int, leave: float) -> dict:
    pngs = [b64(page_png(p, 620, 877)) for p in range(16)]
    sem = asyncio.Semaphore(conc)
    statuses: dict[str, int] = {}
    rnd = random.Random(0)

    async def one(c: httpx.AsyncClient, i: int) -> None:
        body = {"prompt": PROMPT, "max_tokens": out_tokens, "ignore_eos": True, "image_base64": pngs[i % 16]}
        async with sem:
            try:
                if rnd.random() < leave:  # this client gives up early: the server must abort its work
                    await asyncio.wait_for(c.post("/generate", json=body), timeout=rnd.uniform(0.05, 1.0))
                    key = "left_late"
                else:
                    key = str((await c.post("/generate", json=body)).status_code)
            except TimeoutError:
                key = "left"
            except httpx.HTTPError as e:
                key = type(e).__name__
            statuses[key] = statuses.get(key, 0) + 1

    async with client(base, conc) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(c, i) for i in range(n)))
        return {"statuses": statuses, "seconds": round(time.perf_counter() - t0, 1)}


def phase_soak(base: str, pid: int, n: int, conc: int, out_tokens: int, metrics_url: str) -> None:
    rss0 = rss_mb(pid)
    out = asyncio.run(soak(base, n, conc, out_tokens, 0.10))
    time.sleep(3)  # let aborts reach the engine
    after = scrape(metrics_url)  # one page for every gauge
    errors_5xx = sum(v for k, v in out["statuses"].items() if k.startswith("5") and k != "503")
    result(
        kind="soak", requests=n, concurrency=conc, out_tokens=out_tokens, **out, server_5xx_not_503=errors_5xx,
        vllm_running_after=metric(after, "vllm:num_requests_running"),
        vllm_waiting_after=metric(after, "vllm:num_requests_waiting"),
        kv_cache_usage_after=metric(after, "vllm:kv_cache_usage_perc"),
        api_rss_mb_start=round(rss0, 1), api_rss_mb_end=round(rss_mb(pid), 1),
    )  # fmt: skip


def phase_death(base: str, server, out_tokens: int) -> None:
    pngs = [b64(page_png(p)) for p in range(64)]
    body = {"prompt": PROMPT, "max_tokens": out_tokens, "ignore_eos": True}

    async def burst() -> list:
        async with client(base, 64) as c:
            tasks = [asyncio.create_task(c.post("/generate", json={**body, "image_base64": b})) for b in pngs]
            await asyncio.sleep(4)
            pids = engine_core_pids(server.pid)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            t_kill = time.perf_counter()
            rs = await asyncio.gather(*tasks, return_exceptions=True)
            answered = time.perf_counter() - t_kill
            ready = None
            try:
                ready = (await c.get("/ready")).json()
            except httpx.HTTPError as e:
                ready = f"no answer: {type(e).__name__}"
            return [pids, rs, answered, ready]

    pids, rs, answered, ready = asyncio.run(burst())
    codes: dict[str, int] = {}
    for r in rs:
        k = str(r.status_code) if isinstance(r, httpx.Response) else type(r).__name__
        codes[k] = codes.get(k, 0) + 1
    sample = next((r.json() for r in rs if isinstance(r, httpx.Response) and r.status_code == 503), None)
    try:
        code = server.wait(60)
    except Exception:
        code = "still running after 60 s"
    result(kind="engine_death", killed=pids, statuses=codes, all_answered_within_s=round(answered, 2),
           ready_after=ready, sample_503=sample, server_exit=code)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--model", default="/tmp/dsocr")
    ap.add_argument("--phases", default="burst")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--out-tokens", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--mode-pages", type=int, help="pages at once per mode in mode_rates (default: --pages)")
    ap.add_argument("--rate-modes", default="", help="modes for mode_rates, comma-separated (default: all)")
    ap.add_argument("--soak-requests", type=int, default=2000)
    ap.add_argument("--soak-concurrency", type=int, default=256)
    ap.add_argument("--soak-tokens", type=int, default=48)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--workers", type=int, default=16, help="NUM_WORKERS: renderer threads")
    ap.add_argument("--ngram-impl", default="batched")
    ap.add_argument("--profile-s", type=float, default=0, help="py-spy a process during the first burst")
    ap.add_argument("--profile-target", choices=("front", "api", "core"), default="front",
                    help="which: this service, its vLLM child's first API server, or the EngineCore")  # fmt: skip
    ap.add_argument("--label", default="batched")
    ap.add_argument("--extra-env", default="", help="KEY=VALUE,... passed to the server")
    ap.add_argument("--uvicorn-args", default="", help="uvicorn flags, comma-separated: --loop=asyncio,--http=h11")
    args = ap.parse_args()
    phases = args.phases.split(",")

    env = {
        "ENGINE": args.engine, "MODEL_PATH": args.model, "LOAD_FORMAT": "dummy", "DATA_DIR": tempfile.mkdtemp(),
        "MAX_CONCURRENCY": str(args.max_num_seqs), "GPU_MEM_UTILIZATION": "0.9", "NUM_WORKERS": str(args.workers),
        "NGRAM_IMPL": args.ngram_impl, "MAX_UPLOAD_BYTES": str(64 << 20), "LOG_LEVEL": "WARNING",
        "MAX_QUEUE": "4096", "ENGINE_DEATH": "exit", "VLLM_SERVE_PORT": "18000",
    }  # fmt: skip
    env.update(kv.split("=", 1) for kv in args.extra_env.split(",") if kv)
    log = Path(os.environ.get("OUT") or tempfile.gettempdir()) / "gpu_bench_server.log"  # kept if a run times out
    t0 = time.time()
    flags = ("--log-level", "warning", *(a for a in args.uvicorn_args.split(",") if a))
    server, base = start_service(env, log=log, timeout=900, uvicorn_args=flags)
    children: list[dict] = []  # the managed `vllm serve` children as `/` lists them: url (or port), log, ...
    try:
        info = httpx.get(f"{base}/").json()["engine"]
        # vLLM's gauges and histograms: this service's /metrics in-process, the managed children's with VLLM_API_SERVERS
        managed = info.get("shape") == "vllm serve (managed)"  # VLLM_API_SERVERS: -1 (default) on a GPU box, or N
        children = (info.get("children") or [info]) if managed else []
        # a child's entry has its url; the one child's port stands at the top level
        metrics_url = " ".join(c.get("url") or f"http://127.0.0.1:{c['port']}" for c in children) if managed else base
        print(f"service up in {time.time() - t0:.0f} s: {json.dumps(info)}", flush=True)
        modes = list(httpx.get(f"{base}/ocr/info").json()["modes"])
        warm = {"prompt": PROMPT, "max_tokens": 8, "image_base64": b64(page_png(0))}
        asyncio.run(send_all(base, [warm, warm]))
        for phase in phases:
            t1 = time.time()
            try:
                if phase == "modes":
                    phase_modes(base, modes)
                elif phase == "mixed":
                    phase_mixed(base, modes, 8)
                elif phase == "mode_rates":
                    picked = [m for m in args.rate_modes.split(",") if m] or modes
                    phase_mode_rates(base, picked, args.mode_pages or args.pages, args.out_tokens)
                elif phase == "burst":
                    phase_burst(
                        base, args.pages, args.out_tokens, args.passes, args.label, server.pid, args.profile_s,
                        metrics_url, args.profile_target, int(env["VLLM_SERVE_PORT"]) if managed else None,
                    )  # fmt: skip
                elif phase == "soak":
                    phase_soak(
                        base, server.pid, args.soak_requests, args.soak_concurrency, args.soak_tokens, metrics_url
                    )
                elif phase == "death":
                    phase_death(base, server, args.out_tokens)
            except Exception as e:
                result(kind=phase, error=f"{type(e).__name__}: {e}"[:500])
            print(f"phase {phase}: {time.time() - t1:.0f} s", flush=True)
    finally:
        if server.poll() is None:
            stop_service(server, grace=20)
        keep_child_logs(children, log.parent)


if __name__ == "__main__":
    main()
