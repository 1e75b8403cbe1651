"""The engine alone (vLLM's LLM.generate, no HTTP, no service) on the service's work unit, for comparison.

Same synthetic A4 pages, prompt, modes plugin and guard choices as the service: --guard batched (ours),
vllm (vLLM's NGramPerReqLogitsProcessor, the recipe's guard: with a cold pass this is the naive path of
the official scripts) or none. Passes over the same pages: the first is cold (vLLM preprocesses every
page serially in this process); later passes hit the multimodal processor cache (--mm-cache-gb > 0), so
they measure the engine without preprocessing. A pass named `...-noguard` runs without the guard on the
same engine (the ceiling the guard is measured against); a pass named `fill` generates one token per page, to
fill that cache quickly (its time is preprocessing + prefill). Each pass reports nvidia-smi's GPU busy %;
--profile-s N samples the EngineCore process with py-spy for N s during the first timed pass after a fill.
Prints one RESULT line (JSON) per pass.

    python bench/engine_bench.py --guard batched --passes cold,cached,cached-noguard --mm-cache-gb 16
    python bench/engine_bench.py --guard batched --passes fill,cached --profile-s 15
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gpu_watch import GpuBusy, engine_core_pids, start_profile
from pages import page_image
from pyspy_summary import report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
PROMPT = "<image>\n<|grounding|>Convert the document to markdown. "


def phase_means(outs: list) -> dict:
    """Mean seconds per request in vLLM's engine queue, prefill and decode (its per-request stats, the ones
    the service's /metrics histograms sum), and when the last page left the queue: the ramp of a burst."""
    stats = [o.metrics for o in outs if getattr(o, "metrics", None) is not None and o.metrics.scheduled_ts]
    if not stats:
        return {}
    n = len(stats)
    t0 = min(s.queued_ts for s in stats)
    return {
        "vllm_queue_mean_s": round(sum(s.scheduled_ts - s.queued_ts for s in stats) / n, 3),
        "vllm_prefill_mean_s": round(sum(s.first_token_ts - s.scheduled_ts for s in stats) / n, 3),
        "vllm_decode_mean_s": round(sum(s.last_token_ts - s.first_token_ts for s in stats) / n, 3),
        "vllm_ttft_mean_s": round(sum(s.first_token_latency for s in stats) / n, 3),
        "last_scheduled_s": round(max(s.scheduled_ts for s in stats) - t0, 3),
        "last_token_s": round(max(s.last_token_ts for s in stats) - t0, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/dsocr")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--out-tokens", type=int, default=1000)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--kv-cache-dtype", default="auto")
    ap.add_argument("--mm-cache-gb", type=float, default=16)
    ap.add_argument(
        "--guard",
        choices=["batched", "vllm", "none"],
        default="batched",
        help="none: no logits processor at all (vLLM then skips its per-step sync of sampled tokens)",
    )
    ap.add_argument("--encoder-cudagraph", action="store_true", help="vLLM's CUDA graphs for the vision encoder")
    ap.add_argument("--max-num-batched-tokens", type=int, default=16384)
    ap.add_argument("--tag", default="", help="names this run's token files in $OUT")
    ap.add_argument(
        "--torch-profile", type=int, default=0, metavar="STEPS",
        help="vLLM's torch profiler over STEPS engine steps from step 400 of the pass after a fill (decode, mid-pass): "
        "$OUT/torch/profiler_out_0.txt has the CUDA and CPU time per op",
    )  # fmt: skip
    ap.add_argument("--passes", default="cold,cached")
    ap.add_argument("--profile-s", type=float, default=0, help="py-spy the EngineCore during the pass after a fill")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams

    from engines import vllm_engine, vllm_pixels, vllm_register
    from process.ngram_norepeat import violations

    vllm_register.register()
    if folder := vllm_engine.tuned_moe_folder():
        os.environ.setdefault("VLLM_TUNED_CONFIG_FOLDER", folder)
    if args.guard == "vllm":
        from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor as proc
    else:
        from engines.vllm_ngram import BatchedNGramLogitsProcessor as proc
    procs = [] if args.guard == "none" else [proc]
    out_dir = Path(os.environ.get("OUT", "/tmp"))
    extra = {}
    if args.torch_profile:
        from vllm.config.profiler import ProfilerConfig

        folder = out_dir.resolve() / "torch"
        extra["profiler_config"] = ProfilerConfig(
            profiler="torch", torch_profiler_dir=str(folder), ignore_frontend=True, delay_iterations=400,
            max_iterations=args.torch_profile, torch_profiler_with_stack=False,
        )  # fmt: skip
    t0 = time.time()
    llm = LLM(
        model=args.model, load_format="dummy", enable_prefix_caching=False, mm_processor_cache_gb=args.mm_cache_gb,
        max_model_len=8192, max_num_seqs=args.max_num_seqs, gpu_memory_utilization=0.9,
        kv_cache_dtype=args.kv_cache_dtype, logits_processors=procs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        compilation_config={"cudagraph_mm_encoder": args.encoder_cudagraph}, disable_log_stats=False, **extra,
    )  # fmt: skip
    print(f"engine up in {time.time() - t0:.1f} s (guard {args.guard})", flush=True)
    tag = args.tag or f"{args.guard}-u{int(vllm_pixels.enabled())}"
    inputs = [{"prompt": PROMPT, "multi_modal_data": {"image": page_image(p)}} for p in range(args.pages)]
    guard = {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
    rule = (guard["ngram_size"], guard["window_size"], set(guard["whitelist_token_ids"]))

    def params(guarded: bool, tokens: int = args.out_tokens) -> SamplingParams:
        return SamplingParams(
            temperature=0.0, max_tokens=tokens, ignore_eos=True, skip_special_tokens=False,
            extra_args=guard if guarded else None,
        )  # fmt: skip

    warm = [{"prompt": PROMPT, "multi_modal_data": {"image": page_image(10_000)}}] * 2
    llm.generate(warm, params(args.guard != "none"))
    passes = args.passes.split(",")
    for i, kind in enumerate(passes):
        guarded = args.guard != "none" and not kind.endswith("noguard")
        if kind == "fill":
            t1 = time.time()
            llm.generate(inputs, params(guarded, 1))
            fill = {"kind": "engine-fill", "pages": args.pages, "seconds": round(time.time() - t1, 2)}
            print("RESULT", json.dumps(fill), flush=True)
            continue
        spy = None
        after_fill = i > 0 and passes[i - 1] == "fill"
        if args.profile_s and after_fill and (pids := engine_core_pids(os.getpid())):
            prof = out_dir / f"pyspy_enginecore_{kind}.txt"
            spy = start_profile(pids[0], args.profile_s, 5, prof)
        torch_prof = bool(args.torch_profile) and after_fill
        if torch_prof:
            llm.start_profile()
        t1 = time.time()
        with GpuBusy() as busy:
            outs = llm.generate(inputs, params(guarded))
        dt = time.time() - t1
        if torch_prof:
            llm.stop_profile()
        if spy is not None:
            spy.wait(timeout=args.profile_s + 30)
            print(report(prof, 100, args.profile_s), flush=True)
        # Every page's output tokens, to compare two runs (e.g. UINT8_PIXELS=1 vs 0: the same tokens expected)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        (out_dir / f"tokens_{tag}_{kind}.json").write_text(json.dumps(tokens))
        out_tok = sum(map(len, tokens))
        # Tokens the guard's rule forbids, in the finished outputs: 0 with a working guard; random weights
        # under greedy decoding loop, so the pass without the guard shows how many there would be.
        broken = sum(violations(t, *rule) for t in tokens)
        print("RESULT", json.dumps({
            "kind": f"engine-{kind}-guard-{args.guard if guarded else 'none'}", "pass_no": i, "pages": args.pages,
            "seconds": round(dt, 2),
            "pages_per_s": round(args.pages / dt, 3), "out_tok_per_s": round(out_tok / dt, 1),
            "prompt_tokens_per_page": sum(len(o.prompt_token_ids) for o in outs) // args.pages,
            "out_tokens_per_page": out_tok // args.pages, "max_num_seqs": args.max_num_seqs,
            "kv_cache_dtype": args.kv_cache_dtype, "mm_cache_gb": args.mm_cache_gb,
            "tuned_moe": os.environ.get("VLLM_TUNED_CONFIG_FOLDER"), "guard_rule_violations": broken,
            **busy.summary(), "batched_encoder": os.environ.get("BATCHED_ENCODER", "0") == "1",
            "encoder_cudagraph": args.encoder_cudagraph, "max_num_batched_tokens": args.max_num_batched_tokens,
            "uint8_pixels": vllm_pixels.enabled(), "device_views": os.environ.get("DEVICE_VIEWS", "0") == "1",
            **phase_means(outs),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
