"""The repetition guard of DeepSeek-OCR, batched, without stalling the GPU.

Semantics (the official NoRepeatNGramLogitsProcessor, per request, over generated tokens only): once a
request has at least `n` output tokens, ban every token t such that (last n-1 tokens, t) already occurs
as an n-gram starting inside the last `window` tokens; whitelisted tokens (<td>, </td>) are never banned.

vLLM's NGramPerReqLogitsProcessor runs that loop in Python for every request at every step. Here each
request's last tokens live in one [max_batch, width] array, shifted by the new token each step, and all
requests are matched at once (a sliding-window view + compare). The arrays stay on the CPU on purpose:
vLLM schedules asynchronously (the CPU prepares step k+1 while the GPU runs step k), and any device ->
host read in a logits processor (`nonzero`, `.item()`, a pageable copy) would stall that pipeline every
step. Only the few banned (row, token) pairs go to the device, with a non-blocking copy.

Tokens are read in `apply`, not in `update_state`: under async scheduling the newest output token is
still a -1 placeholder when vLLM calls `update_state`, and vLLM fills it in just before sampling.
The pure pieces (`reference_bans`, `ngram_bans`, `TokenWindows`) are unit-tested on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

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


def ngram_bans(
    windows: np.ndarray, lengths: np.ndarray, n: int, whitelist: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, tokens) to ban for a batch.

    windows: [B, W] the last W output tokens of each row, right-aligned, PAD on the left.
    lengths: [B] how many output tokens each row has produced in all.
    """
    b, w = windows.shape
    if w < n or b == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    grams = sliding_window_view(windows, n, axis=1)  # [B, W-n+1, n]: every n-gram inside the window (a view)
    # Candidates first: n-grams whose (n-1)th token is the row's newest token; only those are compared whole.
    ok = (grams[:, :, n - 1] != PAD) & (lengths >= n)[:, None]
    if n > 1:
        ok &= grams[:, :, n - 2] == windows[:, -1:]
    rows, cols = np.nonzero(ok)
    if n > 2 and rows.size:
        whole = (grams[rows, cols, : n - 1] == windows[rows, w - (n - 1) :]).all(axis=-1)
        rows, cols = rows[whole], cols[whole]
    tokens = grams[rows, cols, n - 1].astype(np.int64)
    if whitelist.size and tokens.size:
        keep = ~np.isin(tokens, whitelist)
        rows, tokens = rows[keep], tokens[keep]
    return rows, tokens


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


class TokenWindows:
    """Each batch row's last `width` output tokens, kept up to date incrementally.

    Mirrors vLLM's persistent batch: `add`, `remove`, `move`/`swap` as BatchUpdate reports them; `sync()`
    (run by `apply`) appends the tokens produced since the last step (one per row when decoding; rows that
    gained more, lost some, or were just added are rebuilt from their list).
    """

    def __init__(self, max_rows: int, width: int, pin_memory: bool = False):
        self.width = width
        self.pin_memory = pin_memory  # vLLM says whether pinned host memory works here (not under WSL)
        self.tokens = np.full((max_rows, width), PAD, dtype=np.int64)
        self.rows: dict[int, _Row] = {}

    def add(self, index: int, params: Params, output: list[int]) -> None:
        self.rows[index] = _Row(params, output)

    def remove(self, index: int) -> None:
        self.rows.pop(index, None)

    def move(self, src: int, dst: int) -> None:
        row = self.rows.pop(src, None)
        if row is None:
            self.rows.pop(dst, None)
            return
        self.rows[dst] = row
        self.tokens[dst] = self.tokens[src]

    def swap(self, a: int, b: int) -> None:
        ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
        if ra is not None:
            self.rows[b] = ra
        if rb is not None:
            self.rows[a] = rb
        self.tokens[[a, b]] = self.tokens[[b, a]]

    def sync(self) -> None:
        step_rows, step_tokens = [], []
        for index, row in self.rows.items():
            real = _real_len(row.output)
            if row.seen >= 0 and real == row.seen + 1:
                step_rows.append(index)
                step_tokens.append(row.output[real - 1])
            elif real != row.seen:
                tail = row.output[max(0, real - self.width) : real]
                self.tokens[index] = PAD
                if tail:
                    self.tokens[index, self.width - len(tail) :] = tail
            row.seen = real
        if step_rows:
            idx = np.array(step_rows)
            self.tokens[idx, :-1] = self.tokens[idx, 1:]
            self.tokens[idx, -1] = step_tokens

    def bans(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, tokens) every guarded row must not produce next."""
        groups: dict[Params, list[int]] = {}
        for index, row in self.rows.items():
            if row.seen >= row.params[0]:
                groups.setdefault(row.params, []).append(index)
        found_rows, found_tokens = [], []
        for (n, window, whitelist), indexes in groups.items():
            idx = np.array(indexes)
            lengths = np.array([self.rows[i].seen for i in indexes])
            view = self.tokens[idx, max(0, self.width - window) :]
            rows, toks = ngram_bans(view, lengths, n, np.array(whitelist, dtype=np.int64))
            found_rows.append(idx[rows])
            found_tokens.append(toks)
        if not found_rows:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        return np.concatenate(found_rows), np.concatenate(found_tokens)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Set banned tokens' logits to -inf, in place, for every row with a guard (no device sync)."""
        self.sync()
        rows, toks = self.bans()
        keep = rows < logits.shape[0]
        if not keep.all():
            rows, toks = rows[keep], toks[keep]
        if rows.size:
            pairs = torch.from_numpy(np.stack([rows, toks]))
            if logits.device.type != "cpu":
                pairs = (pairs.pin_memory() if self.pin_memory else pairs).to(logits.device, non_blocking=True)
            logits[pairs[0], pairs[1]] = float("-inf")
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
            return self.state.apply(logits) if self.state.rows else logits

    return BatchedNGramLogitsProcessor


MAX_WINDOW = 256  # longest window the batched guard keeps per request (the official default is 90)
