"""The repetition guard of DeepSeek-OCR, batched, without stalling the GPU.

Semantics (the official NoRepeatNGramLogitsProcessor, per request, over generated tokens only): once a
request has at least `n` output tokens, ban every token t such that (last n-1 tokens, t) already occurs
as an n-gram starting inside the last `window` tokens; whitelisted tokens (<td>, </td>) are never banned.

vLLM's NGramPerReqLogitsProcessor runs that loop in Python for every request at every step. Here each
request's last tokens live in one [max_batch, width] array, shifted by the new token each step, next to
how long a suffix each position shares with the newest token (extended by one compare per position per
step), so all requests are matched at once in O(width) per row, however repetitive the output (comparing
every candidate n-gram whole, as before, cost ~3 ms a step for 256 looping rows). The arrays stay on the
CPU on purpose: vLLM schedules asynchronously (the CPU prepares step k+1 while the GPU runs step k), and any device ->
host read in a logits processor (`nonzero`, `.item()`, a pageable copy) would stall that pipeline every
step. Only the few banned (row, token) pairs go to the device (process/logits_bans.py: reused buffers, a
device -inf, nothing that waits for the GPU).

Tokens are read in `apply`, not in `update_state`: under async scheduling the newest output token is
still a -1 placeholder when vLLM calls `update_state`, and vLLM fills it in just before sampling.
The pure pieces (`reference_bans`, `suffix_matches`, `suffix_bans`, `TokenWindows`) are unit-tested on the CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from process.logits_bans import BanWriter

log = logging.getLogger("vllm.ocr_guard")  # under vLLM's logger: its handler prints in the engine core
PAD = -1  # an empty slot in a window; also vLLM's placeholder for a token not yet sampled
Params = tuple[int, int, tuple[int, ...]]  # (n, window, whitelist)


def reference_bans(output_ids: Sequence[int], n: int, window: int, whitelist: set[int] = frozenset()) -> set[int]:
    """The official per-request rule, written plainly: the oracle the batched version is tested against."""
    if len(output_ids) < n:
        return set()
    prefix = tuple(output_ids[len(output_ids) - (n - 1) :]) if n > 1 else ()
    start, end = max(0, len(output_ids) - window), len(output_ids) - n + 1
    banned = {output_ids[i + n - 1] for i in range(start, end) if tuple(output_ids[i : i + n - 1]) == prefix}
    return banned - set(whitelist)


def violations(output_ids: Sequence[int], n: int, window: int, whitelist: set[int] = frozenset()) -> int:
    """How many tokens of a finished output the rule would have banned when they were produced (0 when the
    guard worked): token i breaks the rule if the n-gram ending at i already started inside the window."""
    last: dict[tuple[int, ...], int] = {}  # each n-gram's latest start (always before the current one)
    bad = 0
    for i in range(n - 1, len(output_ids)):
        gram = tuple(output_ids[i - n + 1 : i + 1])
        first = max(0, i - window)  # the window when token i was chosen: the i tokens before it
        if output_ids[i] not in whitelist and last.get(gram, -1) >= first:
            bad += 1
        last[gram] = i - n + 1
    return bad


def suffix_matches(tail: Sequence[int], cap: int) -> np.ndarray:
    """For each position p of `tail`: how many tokens tail[..p] and tail[..end] share at their ends (capped;
    0 for the last position). The Z-function of the reversed tail: O(len) once, when a row is (re)built."""
    r = list(reversed(tail))
    m = len(r)
    z = [0] * m
    left = right = 0
    for k in range(1, m):
        if k < right:
            z[k] = min(right - k, z[k - left])
        while k + z[k] < m and r[z[k]] == r[k + z[k]]:
            z[k] += 1
        if k + z[k] > right:
            left, right = k, k + z[k]
    return np.minimum(np.array(z[::-1], dtype=np.int32), cap)  # position p <- z[m - 1 - p]


def next_matches(tokens: np.ndarray, matches: np.ndarray, new: np.ndarray, cap: int) -> np.ndarray:
    """Matches after every row's window shifted in one new token (`tokens` already shifted): the token at
    column c extends the match of the token before it (old column c) when it equals the new token."""
    out = np.zeros_like(matches)
    out[:, :-1] = np.where(tokens[:, :-1] == new[:, None], np.minimum(matches[:, :-1] + 1, cap), 0)
    return out


def suffix_bans(
    tokens: np.ndarray,
    matches: np.ndarray,
    lengths: np.ndarray,
    n: np.ndarray,
    window: np.ndarray,
    live: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, tokens) to ban, from each row's window and matches; O(rows x width), no per-n-gram compare.

    tokens: [B, W] the last W output tokens, right-aligned (PAD on the left); matches: [B, W] how many tokens
    end the window both at column c and at the newest column; lengths, n, window: [B] per row; live: [B]
    the rows to look at (default all).
    The token at column d is banned when the (n-1) tokens before it equal the newest (n-1) tokens
    (matches[d-1] >= n-1) and its n-gram starts inside the row's window (d >= lo).
    """
    w = tokens.shape[1]
    before = np.zeros_like(matches)
    before[:, 1:] = matches[:, :-1]  # column 0: nothing before it (only n = 1 bans there)
    lo = np.maximum(w - lengths, w - window) + n - 1
    rows_ok = lengths >= n if live is None else live & (lengths >= n)
    ok = (before >= (n - 1)[:, None]) & (np.arange(w) >= lo[:, None]) & rows_ok[:, None]
    rows, cols = np.nonzero(ok)
    return rows, tokens[rows, cols]


@dataclass
class _Row:
    params: Params
    output: list[int]  # vLLM's live list of the request's output tokens
    seen: int = -1  # how many of them are in the window array (-1: rebuild from the list)


def _real_len(output: list[int]) -> int:
    """Output tokens that are real (trailing -1 are placeholders vLLM has not filled in yet)."""
    end = len(output)
    while end and output[end - 1] == PAD:
        end -= 1
    return end


def _rows(indexes: list[int]) -> tuple[slice | np.ndarray, np.ndarray]:
    """Row selector for `indexes` (a slice when they are rows 0..k-1, as vLLM keeps its batch dense: views,
    no copies) and the order that puts per-row values in selector order."""
    idx = np.array(indexes)
    order = np.argsort(idx, kind="stable")
    idx = idx[order]
    return (slice(0, idx.size) if idx[-1] == idx.size - 1 else idx), order


class TokenWindows:
    """Each batch row's last output tokens and their suffix matches, kept up to date incrementally.

    Mirrors vLLM's persistent batch: `add`, `remove`, `move`/`swap` as BatchUpdate reports them; `sync()`
    (run by `apply`) shifts in the tokens produced since the last step (one per row when decoding: O(span)
    per row, vectorised over rows); rows that gained more, lost some, or were just added are rebuilt from
    their list. Only the last `span` columns are kept current: the longest window asked for so far (at most
    `width`); a longer one rebuilds every row once. Matches are capped at `span`: no n-gram is longer.
    Per-row rules and lengths live in arrays too, so finding the bans has no per-row Python.
    """

    def __init__(self, max_rows: int, width: int, pin_memory: bool = False):
        """pin_memory: vLLM says whether pinned host memory works here (not under WSL)."""
        self.width = width
        self.span = 0
        self.tokens = np.full((max_rows, width), PAD, dtype=np.int32)
        self.matches = np.zeros((max_rows, width), dtype=np.int32)
        self.rows: dict[int, _Row] = {}
        # per row: n, window, whitelist id, tokens seen (-1: none / free row)
        self.rule = np.zeros((3, max_rows), dtype=np.int64)
        self.seen = np.full(max_rows, -1, dtype=np.int64)
        self.whitelists: dict[tuple[int, ...], int] = {(): 0}
        self.writer = BanWriter(pin_memory)

    def add(self, index: int, params: Params, output: list[int]) -> None:
        if params[1] > self.span and self.span < self.width:
            self.span = min(params[1], self.width)
            for row in self.rows.values():  # columns left of the old span were never kept
                row.seen = -1
        self.rows[index] = _Row(params, output)
        wl = self.whitelists.setdefault(params[2], len(self.whitelists))
        self.rule[:, index] = (params[0], params[1], wl)
        self.seen[index] = -1

    def remove(self, index: int) -> None:
        self.rows.pop(index, None)
        self.seen[index] = -1

    def move(self, src: int, dst: int) -> None:
        row = self.rows.pop(src, None)
        self.seen[src] = -1
        if row is None:
            self.rows.pop(dst, None)
            self.seen[dst] = -1
            return
        self.rows[dst] = row
        for a in (self.tokens, self.matches):
            a[dst] = a[src]
        self.rule[:, dst] = self.rule[:, src]
        self.seen[dst] = row.seen

    def swap(self, a: int, b: int) -> None:
        ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
        if ra is not None:
            self.rows[b] = ra
        if rb is not None:
            self.rows[a] = rb
        for arr in (self.tokens, self.matches, self.seen):
            arr[[a, b]] = arr[[b, a]]
        self.rule[:, [a, b]] = self.rule[:, [b, a]]

    def _rebuild(self, index: int, output: list[int], real: int) -> None:
        tail = output[max(0, real - self.span) : real]
        self.tokens[index] = PAD
        self.matches[index] = 0
        if tail:
            self.tokens[index, self.width - len(tail) :] = tail
            self.matches[index, self.width - len(tail) :] = suffix_matches(tail, self.span)

    def sync(self) -> None:
        step_rows, step_tokens = [], []
        for index, row in self.rows.items():
            out = row.output
            real = len(out)
            if real and out[-1] == PAD:
                real = _real_len(out)
            if real == row.seen + 1 and row.seen >= 0:
                step_rows.append(index)
                step_tokens.append(out[real - 1])
            elif real != row.seen:
                self._rebuild(index, out, real)
                self.seen[index] = real
            row.seen = real
        if not step_rows:
            return
        sel, order = _rows(step_rows)
        new = np.array(step_tokens, dtype=np.int32)[order]
        self.seen[sel] += 1
        cols = slice(self.width - self.span, self.width)
        tokens = self.tokens[sel, cols]  # a view when `sel` is a slice
        tokens[:, :-1] = tokens[:, 1:].copy()
        tokens[:, -1] = new
        self.matches[sel, cols] = next_matches(tokens, self.matches[sel, cols], new, self.span)
        if isinstance(sel, np.ndarray):
            self.tokens[sel, cols] = tokens

    def bans(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, tokens) every guarded row must not produce next."""
        if not self.rows:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        k = max(self.rows) + 1  # rows 0..k-1 at once (free ones masked out: seen -1)
        n, window, wl = self.rule[:, :k]
        seen = self.seen[:k]
        cols = slice(self.width - self.span, self.width)
        rows, toks = suffix_bans(self.tokens[:k, cols], self.matches[:k, cols], seen, n, window, seen >= 0)
        if len(self.whitelists) > 1 and rows.size:  # usually one whitelist (<td>, </td>) for every row
            banned = np.ones(rows.size, dtype=bool)
            for allowed, i in self.whitelists.items():
                if allowed:
                    banned &= ~((wl[rows] == i) & np.isin(toks, np.array(allowed, dtype=np.int64)))
            rows, toks = rows[banned], toks[banned]
        return rows, toks.astype(np.int64)

    def pairs(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """This step's (rows, tokens) to ban, for rows inside a batch of `batch` logits rows."""
        self.sync()
        rows, toks = self.bans()
        keep = rows < batch
        return (rows, toks) if keep.all() else (rows[keep], toks[keep])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Set banned tokens' logits to -inf, in place, for every row with a guard (no device sync)."""
        rows, toks = self.pairs(logits.shape[0])
        return self.writer.write(logits, rows, toks)


class ApplyStats:
    """NGRAM_GUARD_STATS=1: the guard's wall time per step in vLLM's engine core (finding the pairs, writing
    them into the logits), logged every 500 steps."""

    def __init__(self, every: int = 500):
        self.every, self.steps, self.find_s, self.write_s, self.rows, self.bans = every, 0, 0.0, 0.0, 0, 0

    def apply(self, state: TokenWindows, logits: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        rows, toks = state.pairs(logits.shape[0])
        t1 = time.perf_counter()
        state.writer.write(logits, rows, toks)
        self.find_s += t1 - t0
        self.write_s += time.perf_counter() - t1
        self.steps += 1
        self.rows += len(state.rows)
        self.bans += rows.size
        if self.steps % self.every == 0:
            ms = 1000 / self.steps
            log.info(
                "guard: %d steps, find %.3f + write %.3f ms/step, %.0f guarded rows and %.1f bans/step",
                self.steps, self.find_s * ms, self.write_s * ms, self.rows / self.steps, self.bans / self.steps,
            )  # fmt: skip
        return logits


def guard_params(extra_args: dict | None) -> tuple[int, int, tuple[int, ...]] | None:
    """(n, window, whitelist) from SamplingParams.extra_args, the names vLLM's processor uses."""
    if not extra_args or not extra_args.get("ngram_size"):
        return None
    n = int(extra_args["ngram_size"])
    window = int(extra_args.get("window_size", 100))
    if n <= 0 or window <= 0:
        raise ValueError("ngram_size and window_size must be positive integers")
    return n, window, tuple(sorted(int(t) for t in extra_args.get("whitelist_token_ids") or ()))


def make_vllm_processor():
    """The vLLM v1 LogitsProcessor class (imported lazily: vLLM exists only on GPU machines)."""
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    class BatchedNGramLogitsProcessor(LogitsProcessor):
        """Drop-in for NGramPerReqLogitsProcessor: same extra_args, same bans, one batched pass."""

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            guard_params(sampling_params.extra_args)

        def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
            self.state = TokenWindows(vllm_config.scheduler_config.max_num_seqs, MAX_WINDOW, is_pin_memory)
            self.stats = ApplyStats() if os.environ.get("NGRAM_GUARD_STATS") == "1" else None

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is not None:
                for index in batch_update.removed:
                    self.state.remove(index)
                for index, params, _prompt, output in batch_update.added:
                    p = guard_params(params.extra_args) if params is not None else None
                    if p is None:
                        self.state.remove(index)
                    else:
                        self.state.add(index, (p[0], min(p[1], MAX_WINDOW), p[2]), output)
                for src, dst, direction in batch_update.moved:
                    if direction == MoveDirectionality.SWAP:
                        self.state.swap(src, dst)
                    else:
                        self.state.move(src, dst)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.state.rows:
                return logits
            return self.state.apply(logits) if self.stats is None else self.stats.apply(self.state, logits)

    return BatchedNGramLogitsProcessor


MAX_WINDOW = 256  # longest window the batched guard keeps per request (the official default is 90)
