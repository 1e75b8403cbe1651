"""Does the repetition guard's write into the logits wait for the GPU? (run on the GPU machine)

With vLLM's async scheduling the CPU runs a step's logits processors while the GPU is still busy with that step's
forward pass; a guard call that blocks until the GPU is idle throws that overlap away every step. Here the GPU
is kept busy (`torch.cuda._sleep`, ~50 ms) and each way of writing the bans is timed on the CPU: a few tens of
microseconds means it did not wait, ~50 ms means it did. Also: the guard's CPU work for 256 looping rows on this
machine's CPU, and that BanWriter writes the same -inf as a plain CPU write.

    python bench/guard_device_check.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from guard_bench import time_guard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from process.logits_bans import BanWriter

VOCAB, ROWS = 129280, 256


def busy_cycles(ms: float) -> int:
    """GPU clock cycles that `torch.cuda._sleep` spins for about `ms` milliseconds."""
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.cuda._sleep(10_000_000)
    torch.cuda.synchronize()
    return int(10_000_000 * ms / (1000 * (time.perf_counter() - t0)))


def timed(write, logits: torch.Tensor, cycles: int, trials: int = 15) -> float:
    """Median CPU wall time (ms) of `write(logits)` issued while the GPU is busy."""
    walls = []
    for _ in range(trials):
        torch.cuda._sleep(cycles)
        t0 = time.perf_counter()
        write(logits)
        walls.append(1000 * (time.perf_counter() - t0))
        torch.cuda.synchronize()
    return statistics.median(walls)


def writes(k: int, dev: torch.device) -> tuple[dict, np.ndarray, np.ndarray, BanWriter]:
    """Each way of writing `k` random bans, by name."""
    rng = np.random.default_rng(k)
    rows, toks = rng.integers(0, ROWS, k), rng.integers(0, VOCAB, k)
    pairs_cpu = torch.from_numpy(np.stack([rows, toks]))
    pairs_dev = pairs_cpu.to(dev)
    neg_inf = torch.tensor(float("-inf"), device=dev)
    writer = BanWriter(pin_memory=True)

    def old(lg: torch.Tensor) -> None:  # the guard until now: a fresh pinned tensor, a copy, a float setitem
        p = pairs_cpu.pin_memory().to(dev, non_blocking=True)
        lg[p[0], p[1]] = float("-inf")

    def setitem(lg: torch.Tensor) -> None:
        lg[pairs_dev[0], pairs_dev[1]] = float("-inf")

    return (
        {
            "old: pin_memory() + copy + setitem float": old,
            "pin_memory() alone": lambda lg: pairs_cpu.pin_memory(),
            "pageable copy, non_blocking": lambda lg: pairs_cpu.to(dev, non_blocking=True),
            "setitem float, indices on device": setitem,
            "index_put_ device -inf, indices on device": lambda lg: lg.index_put_(
                (pairs_dev[0], pairs_dev[1]), neg_inf
            ),
            "new: BanWriter.write": lambda lg: writer.write(lg, rows, toks),
        },
        rows,
        toks,
        writer,
    )


def main() -> None:
    dev = torch.device("cuda")
    logits = torch.zeros(ROWS, VOCAB, device=dev)
    cycles = busy_cycles(50)
    for k in (256, 4096):
        variants, rows, toks, writer = writes(k, dev)
        for name, write in variants.items():
            print(f"{k:5d} pairs  {name:45s} {timed(write, logits, cycles):8.3f} ms (GPU busy ~50 ms)", flush=True)
        ref = torch.zeros(ROWS, VOCAB)
        ref[torch.from_numpy(rows), torch.from_numpy(toks)] = float("-inf")
        got = torch.zeros(ROWS, VOCAB, device=dev)
        for _ in range(3):  # both host buffers in turn
            writer.write(got, rows, toks)
        print(f"{k:5d} pairs  BanWriter equals the CPU write: {torch.equal(got.cpu(), ref)}", flush=True)

    # The guard's CPU work on this machine: 256 rows that loop (every row always wants token 0).
    cpu = time_guard(ROWS, pattern="greedy", reference=False)["batched_ms"]
    print(f"guard CPU work, {ROWS} looping rows: {cpu:.3f} ms/step (apply on CPU logits)", flush=True)


if __name__ == "__main__":
    main()
