"""CPU time per decode step of the repetition guard: the batched guard (process/ngram_norepeat.py) vs the
official per-request rule (what vLLM's NGramPerReqLogitsProcessor runs for each request), same batch.

Decode steps of `--rows` requests that each gain one token per step; logits on the CPU. `--pattern phrase`:
a looping phrase with 20% random tokens (n-grams repeat, bans happen). `--pattern greedy`: what the GPU
runs with dummy weights, a closed loop where every row always wants token 0, then 1, ... and the guard's bans
decide (long runs of one token: the deepest matches). On the GPU the batched guard's apply() adds no
device sync, so this CPU time overlaps the forward pass under vLLM's async scheduling.

    python bench/guard_bench.py --rows 256 --steps 200 [--pattern greedy]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from process.ngram_norepeat import TokenWindows, reference_bans


def time_guard(
    rows: int = 256,
    steps: int = 200,
    warm_tokens: int = 500,
    vocab: int = 40,
    n: int = 30,
    window: int = 90,
    pattern: str = "phrase",
    reference: bool = True,
) -> dict[str, float]:
    """ms/step of the batched guard's apply() (and of the official per-request rule when `reference`), and the
    bans per step the rule gives."""
    rng = random.Random(0)
    # A looping request repeats a phrase: n-grams recur, the guard has work to do.
    phrase = [rng.randrange(vocab) for _ in range(n + 5)]
    if pattern == "greedy":
        outs = [[0] * warm_tokens for _ in range(rows)]
    else:
        outs = [[phrase[i % len(phrase)] for i in range(warm_tokens)] for _ in range(rows)]
    whitelist = (1, 2)
    state = TokenWindows(rows, width=256)
    for i, out in enumerate(outs):
        state.add(i, (n, window, whitelist), out)
    prefs = torch.arange(1000, 0, -1, dtype=torch.float32).repeat(rows, 1)  # token 0 best, then 1, ...
    logits = prefs.clone()
    state.apply(logits)
    batched = per_request = 0.0
    bans = 0
    for _ in range(steps):
        if pattern == "greedy":  # the tokens the model picks under the guard's bans of the last step
            for out, tok in zip(outs, logits.argmax(dim=1).tolist(), strict=True):
                out.append(tok)
        else:
            for out in outs:
                out.append(rng.randrange(vocab) if rng.random() < 0.2 else phrase[len(out) % len(phrase)])
        logits = prefs.clone()
        t0 = time.perf_counter()
        state.apply(logits)
        t1 = time.perf_counter()
        if reference:
            for out in outs:
                bans += len(reference_bans(out, n, window, set(whitelist)))
        per_request += time.perf_counter() - t1
        batched += t1 - t0
    ms = 1000 / steps
    return {"batched_ms": batched * ms, "per_request_ms": per_request * ms, "bans_per_step": bans / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warm-tokens", type=int, default=500, help="tokens each request has before timing")
    ap.add_argument("--vocab", type=int, default=40)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--window", type=int, default=90)
    ap.add_argument("--pattern", choices=("phrase", "greedy"), default="phrase")
    args = ap.parse_args()
    t = time_guard(args.rows, args.steps, args.warm_tokens, args.vocab, args.n, args.window, args.pattern)
    print(f"rows {args.rows}, n {args.n}, window {args.window}, {args.steps} steps, {t['bans_per_step']:.1f} bans/step")
    print(f"batched guard:     {t['batched_ms']:.2f} ms/step")
    ratio = t["per_request_ms"] / t["batched_ms"]
    print(f"per-request rule:  {t['per_request_ms']:.2f} ms/step  ({ratio:.1f}x the batched guard)")


if __name__ == "__main__":
    main()
