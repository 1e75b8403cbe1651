"""The repetition guard of DeepSeek-OCR, batched on the GPU.

Semantics (the official NoRepeatNGramLogitsProcessor, per request, over generated tokens only): once a
request has at least `n` output tokens, ban every token t such that (last n-1 tokens, t) already occurs
as an n-gram starting inside the last `window` tokens; whitelisted tokens (<td>, </td>) are never banned.

vLLM's NGramPerReqLogitsProcessor runs that loop in Python for every request at every step. Here each
request's last `window` tokens live in one [max_batch, window] tensor on the device, shifted by the new
token each step, and all requests are matched at once with `unfold` + compare. The pure pieces
(`reference_bans`, `ngram_bans`, `TokenWindows`) are unit-tested on CPU tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PAD = -1  # an empty slot in a window (never a real token id)


def reference_bans(output_ids: Sequence[int], n: int, window: int, whitelist: set[int] = frozenset()) -> set[int]:
    """The official per-request rule, written plainly: the oracle the batched version is tested against."""
    if len(output_ids) < n:
        return set()
    prefix = tuple(output_ids[len(output_ids) - (n - 1) :]) if n > 1 else ()
    start, end = max(0, len(output_ids) - window), len(output_ids) - n + 1
    banned = {output_ids[i + n - 1] for i in range(start, end) if tuple(output_ids[i : i + n - 1]) == prefix}
    return banned - set(whitelist)


def ngram_bans(
    windows: torch.Tensor, lengths: torch.Tensor, n: int, whitelist: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, tokens) to ban for a batch.

    windows: [B, W] the last W output tokens of each row, right-aligned, PAD on the left.
    lengths: [B] how many output tokens each row has produced in all.
    """
    b, w = windows.shape
    if w < n or b == 0:
        empty = torch.empty(0, dtype=torch.long, device=windows.device)
        return empty, empty
    grams = windows.unfold(1, n, 1)  # [B, W-n+1, n]: every n-gram inside the window
    prefix = windows[:, w - (n - 1) :] if n > 1 else windows[:, :0]  # [B, n-1]
    match = (grams[:, :, : n - 1] == prefix[:, None, :]).all(dim=-1)  # [B, W-n+1]
    last = grams[:, :, n - 1]
    match &= last != PAD
    match &= (lengths >= n)[:, None]
    if whitelist.numel():
        match &= ~torch.isin(last, whitelist)
    rows, cols = match.nonzero(as_tuple=True)
    return rows, last[rows, cols]


@dataclass
class _Row:
    params: tuple[int, int, tuple[int, ...]]  # (n, window, whitelist)
    output: list[int]  # vLLM's live list of the request's output tokens
    seen: int = 0  # how many of them are already in the window tensor


class TokenWindows:
    """Each batch row's last `width` output tokens on the device, kept up to date incrementally.

    Mirrors vLLM's persistent batch: `add`, `remove`, `move`/`swap` as BatchUpdate reports them, then
    `sync()` before each step appends the tokens produced since the last step (one per row when
    decoding; rows that gained more or were just added are rebuilt from their list).
    """

    def __init__(self, max_rows: int, width: int, device: torch.device | str = "cpu"):
        self.width = width
        self.device = torch.device(device)
        self.tokens = torch.full((max_rows, width), PAD, dtype=torch.long, device=self.device)
        self.rows: dict[int, _Row] = {}

    def add(self, index: int, params: tuple[int, int, tuple[int, ...]], output: list[int]) -> None:
        self.rows[index] = _Row(params, output, seen=-1)  # -1: rebuild at next sync

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
        step_rows, step_tokens, rebuild = [], [], []
        for index, row in self.rows.items():
            new = len(row.output) - row.seen
            if row.seen >= 0 and new == 1:
                step_rows.append(index)
                step_tokens.append(row.output[-1])
            elif new != 0:
                rebuild.append(index)
            row.seen = len(row.output)
        if step_rows:
            idx = torch.tensor(step_rows, dtype=torch.long, device=self.device)
            toks = torch.tensor(step_tokens, dtype=torch.long, device=self.device)
            shifted = torch.roll(self.tokens[idx], shifts=-1, dims=1)
            shifted[:, -1] = toks
            self.tokens[idx] = shifted
        for index in rebuild:
            tail = self.rows[index].output[-self.width :]
            row = [PAD] * (self.width - len(tail)) + list(tail)
            self.tokens[index] = torch.tensor(row, dtype=torch.long, device=self.device)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Set banned tokens' logits to -inf, in place, for every row with a guard."""
        groups: dict[tuple[int, int, tuple[int, ...]], list[int]] = {}
        for index, row in self.rows.items():
            if index < logits.shape[0] and len(row.output) >= row.params[0]:
                groups.setdefault(row.params, []).append(index)
        for (n, window, whitelist), indexes in groups.items():
            idx = torch.tensor(indexes, dtype=torch.long, device=self.device)
            lengths = torch.tensor([len(self.rows[i].output) for i in indexes], dtype=torch.long, device=self.device)
            wl = torch.tensor(whitelist, dtype=torch.long, device=self.device)
            view = self.tokens[idx][:, max(0, self.width - window) :]
            rows, toks = ngram_bans(view, lengths, n, wl)
            if rows.numel():
                logits[idx[rows].to(logits.device), toks.to(logits.device)] = float("-inf")
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
            max_rows = vllm_config.scheduler_config.max_num_seqs
            self.state = TokenWindows(max_rows, width=MAX_WINDOW, device=device)

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
            self.state.sync()

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            return self.state.apply(logits) if self.state.rows else logits

    return BatchedNGramLogitsProcessor


MAX_WINDOW = 256  # longest window the batched guard keeps per request (the official default is 90)
