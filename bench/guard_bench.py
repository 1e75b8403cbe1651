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
    rng = random.Random(0)
    # A looping request repeats a phrase: n-grams recur, the guard has work to do.
    phrase = [rng.randrange(args.vocab) for _ in range(args.n + 5)]
    if args.pattern == "greedy":
        outs = [[0] * args.warm_tokens for _ in range(args.rows)]
    else:
        outs = [[phrase[i % len(phrase)] for i in range(args.warm_tokens)] for _ in range(args.rows)]
    whitelist = (1, 2)
    rows = TokenWindows(args.rows, width=256)
    for i, out in enumerate(outs):
        rows.add(i, (args.n, args.window, whitelist), out)
    prefs = torch.arange(1000, 0, -1, dtype=torch.float32).repeat(args.rows, 1)  # token 0 best, then 1, ...
    logits = prefs.clone()
    rows.apply(logits)
    batched = per_request = 0.0
    bans = 0
    for _ in range(args.steps):
        if args.pattern == "greedy":  # the tokens the model picks under the guard's bans of the last step
            for out, tok in zip(outs, logits.argmax(dim=1).tolist(), strict=True):
                out.append(tok)
        else:
            for out in outs:
                out.append(rng.randrange(args.vocab) if rng.random() < 0.2 else phrase[len(out) % len(phrase)])
        logits = prefs.clone()
        t0 = time.perf_counter()
        rows.apply(logits)
        t1 = time.perf_counter()
        for out in outs:
            bans += len(reference_bans(out, args.n, args.window, set(whitelist)))
        per_request += time.perf_counter() - t1
        batched += t1 - t0
    ms = 1000 / args.steps
    print(f"rows {args.rows}, n {args.n}, window {args.window}, {args.steps} steps, {bans / args.steps:.1f} bans/step")
    print(f"batched guard:     {batched * ms:.2f} ms/step")
    print(f"per-request rule:  {per_request * ms:.2f} ms/step  ({per_request / batched:.1f}x the batched guard)")


if __name__ == "__main__":
    main()
