"""The batched repetition guard bans exactly what the official per-request rule bans, also the way vLLM's
async scheduling feeds it (the newest token a -1 placeholder until just before sampling)."""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from process.ngram_norepeat import (  # noqa: E402
    TokenWindows,
    guard_params,
    reference_bans,
    suffix_bans,
    suffix_matches,
    violations,
)


def batched(outputs: list[list[int]], n: int, window: int, whitelist=()) -> list[set[int]]:
    rows = TokenWindows(len(outputs), width=window)
    for i, out in enumerate(outputs):
        rows.add(i, (n, window, tuple(whitelist)), out)
    logits = torch.zeros(len(outputs), 50)
    rows.apply(logits)
    return [set(torch.nonzero(torch.isinf(logits[i])).flatten().tolist()) for i in range(len(outputs))]


def test_simple_loop_is_banned():
    out = [1, 2, 3, 1, 2]  # "1 2" seen before, followed by 3 -> 3 is banned after "... 1 2" (n=3)
    assert reference_bans(out, 3, 90) == {3}
    assert batched([out], 3, 90) == [{3}]
    assert batched([out], 3, 90, whitelist=[3]) == [set()]
    assert batched([[1, 2]], 3, 90) == [set()]  # fewer than n tokens: nothing


@pytest.mark.parametrize("seed", range(25))
def test_matches_reference_on_random_sequences(seed):
    rng = random.Random(seed)
    n = rng.choice([1, 2, 3, 4, 6])
    window = rng.choice([n, n + 3, 12, 30, 90])
    vocab = rng.choice([3, 5, 8])
    whitelist = set(rng.sample(range(vocab), k=rng.choice([0, 1])))
    outputs = [[rng.randrange(vocab) for _ in range(rng.randrange(0, 120))] for _ in range(8)]
    expected = [reference_bans(o, n, window, whitelist) for o in outputs]
    assert batched(outputs, n, window, sorted(whitelist)) == expected


def test_incremental_updates_follow_the_persistent_batch():
    rng = random.Random(7)
    n, window = 3, 12
    rows = TokenWindows(4, width=window)
    outs = {i: [] for i in range(4)}
    for i in range(3):
        rows.add(i, (n, window, ()), outs[i])
    for step in range(60):
        logits = torch.zeros(4, 6)
        rows.apply(logits)
        for i, row in rows.rows.items():
            got = set(torch.nonzero(torch.isinf(logits[i])).flatten().tolist())
            assert got == reference_bans(row.output, n, window), (step, i)
        for row in rows.rows.values():  # every live request decodes one token
            row.output.append(rng.randrange(4))
        if step == 20:
            rows.swap(0, 2)
        if step == 30:
            rows.remove(1)
            outs[3] = [1, 2, 1, 2, 1]  # a resumed request arrives with tokens already
            rows.add(1, (n, window, ()), outs[3])
        if step == 40:
            rows.move(2, 3)


def test_async_scheduling_placeholders_are_never_read_as_tokens():
    """vLLM appends -1 after each step and fills it in right before sampling (apply); update_state runs in
    between. Bans must equal the reference on the real tokens at every step, whatever update_state saw."""
    rng = random.Random(3)
    n, window = 3, 10
    rows = TokenWindows(2, width=window)
    outs: list[list[int]] = [[], []]
    banned_steps = 0
    for i in range(2):
        rows.add(i, (n, window, ()), outs[i])
    for step in range(80):
        for out in outs:  # the step before was sampled: vLLM's model runner appends a placeholder
            out.append(-1)
        if step % 7 == 3:  # a step where apply runs before the placeholder is filled: it is skipped
            logits = torch.zeros(2, 5)
            rows.apply(logits)
            for i, out in enumerate(outs):
                got = set(torch.nonzero(torch.isinf(logits[i])).flatten().tolist())
                assert got == reference_bans(out[:-1], n, window), (step, i)
        for out in outs:  # update_async_output_token_ids: the real token replaces the placeholder
            out[-1] = rng.randrange(3)
        logits = torch.zeros(2, 5)
        rows.apply(logits)
        for i, out in enumerate(outs):
            got = set(torch.nonzero(torch.isinf(logits[i])).flatten().tolist())
            assert got == reference_bans(out, n, window), (step, i)
            tail = out[-window:]
            assert rows.tokens[i][-len(tail) :].tolist() == tail  # the window holds real tokens only
            banned_steps += bool(got)
    assert banned_steps > 20  # the run did exercise bans


def test_vectorised_core_directly():
    assert suffix_matches([5, 6, 5, 6, 5], cap=9).tolist() == [1, 0, 3, 0, 0]  # "5", "5 6 5" end like the tail
    assert suffix_matches([1, 1, 1, 1], cap=2).tolist() == [1, 2, 2, 0]
    tokens = np.array([[-1, -1, 5, 6, 5], [1, 1, 1, 1, 1]])
    matches = np.stack([np.r_[0, 0, suffix_matches([5, 6, 5], 5)], suffix_matches([1] * 5, 5)])
    rows, toks = suffix_bans(tokens, matches, np.array([3, 9]), np.array([2, 2]), np.array([90, 90]))
    assert sorted(zip(rows.tolist(), toks.tolist(), strict=True)) == [(0, 6), (1, 1), (1, 1), (1, 1), (1, 1)]


@pytest.mark.parametrize("seed", range(6))
def test_long_outputs_past_the_window_width(seed):
    """Outputs far longer than the kept width, fed one token a step, rebuilt midway, with several rules and
    whitelists in one batch: bans equal the reference at every step."""
    rng = random.Random(100 + seed)
    width = 16
    rules = [(1, 16, ()), (3, 7, (0,)), (4, 16, ()), (6, 12, (1, 2)), (17, 16, ())]
    rows = TokenWindows(len(rules), width=width)
    outs: list[list[int]] = [[] for _ in rules]
    for i, rule in enumerate(rules):
        rows.add(i, rule, outs[i])
    for step in range(150):
        logits = torch.zeros(len(rules), 4)
        rows.apply(logits)
        for i, (n, window, whitelist) in enumerate(rules):
            got = set(torch.nonzero(torch.isinf(logits[i])).flatten().tolist())
            assert got == reference_bans(outs[i], n, window, set(whitelist)), (step, i)
        for out in outs:
            out.append(rng.choice([0, 0, 0, 1, 2, 3]))  # long runs of 0: deep matches
        if step == 70:
            outs[2].extend([0, 0])  # two tokens at once: the row is rebuilt from its last `width` tokens


def test_looping_model_under_the_guard():
    """The dummy-weights pattern on the GPU: every row always wants token 0; the guard breaks each run of n."""
    n, window, rows_n = 5, 12, 3
    rows = TokenWindows(rows_n, width=32)
    outs: list[list[int]] = [[] for _ in range(rows_n)]
    for i in range(rows_n):
        rows.add(i, (n, window, ()), outs[i])
    prefs = torch.arange(8, 0, -1, dtype=torch.float32)  # token 0 best, then 1, ...
    for _ in range(120):
        logits = prefs.repeat(rows_n, 1)
        rows.apply(logits)
        for i, out in enumerate(outs):
            assert set(torch.nonzero(torch.isinf(logits[i])).flatten().tolist()) == reference_bans(out, n, window)
            out.append(int(torch.argmax(logits[i])))
    assert all(violations(out, n, window) == 0 for out in outs)
    assert outs[0][: n + 1] == [0] * n + [1]  # the first run of n zeros was broken by the next best token


def test_params_from_extra_args():
    assert guard_params(None) is None and guard_params({"window_size": 5}) is None
    assert guard_params({"ngram_size": 30, "window_size": 90, "whitelist_token_ids": {128822, 128821}}) == (
        30, 90, (128821, 128822),
    )  # fmt: skip
    with pytest.raises(ValueError):
        guard_params({"ngram_size": -1})


@pytest.mark.parametrize("seed", range(10))
def test_violations_count_what_the_rule_would_ban(seed):
    rng = random.Random(seed)
    n, window, whitelist = rng.choice([2, 3, 4]), rng.choice([6, 12, 90]), {0}
    out = [rng.randrange(3) for _ in range(150)]
    expected = sum(out[i] in reference_bans(out[:i], n, window, whitelist) for i in range(len(out)))
    assert violations(out, n, window, whitelist) == expected
    assert expected > 0  # random tokens from 3 values do repeat


def test_guarded_generation_has_no_violations():
    """Greedy decoding that would loop forever (always the same cycle) under the guard: no violations."""
    n, window = 3, 20
    rows = TokenWindows(1, width=window)
    out: list[int] = []
    rows.add(0, (n, window, ()), out)
    for _ in range(200):
        logits = torch.zeros(1, 50)
        logits[0, len(out) % 3] = 1.0  # the "model" wants to repeat 0 1 2 0 1 2 ... (never all 50 banned)
        rows.apply(logits)
        out.append(int(torch.argmax(logits[0])))
    assert violations(out, n, window) == 0
    assert violations([i % 3 for i in range(200)], n, window) > 100


def test_apply_stats_log_the_time_per_step(caplog):
    from process.ngram_norepeat import ApplyStats

    rows = TokenWindows(2, width=8)
    outs: list[list[int]] = [[], []]
    for i in range(2):
        rows.add(i, (2, 8, ()), outs[i])
    stats = ApplyStats(every=2)
    with caplog.at_level("INFO", logger="vllm.ocr_guard"):
        for _ in range(4):
            logits = torch.zeros(2, 3)
            stats.apply(rows, logits)
            for out in outs:
                out.append(0)
    assert stats.steps == 4 and stats.rows == 8
    assert stats.bans == 6  # token 0 in both rows: once at step 3 ("0 0" seen once), twice at step 4
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["guard: 2 steps", "guard: 4 steps"]


def test_a_longer_window_arriving_later_rebuilds_every_row():
    """Rows keep only the longest window asked for so far; a request with a longer one arrives mid-run and the
    others' bans stay exact (they are rebuilt from their lists once), also after swaps and moves."""
    rng = random.Random(11)
    rows = TokenWindows(4, width=32)
    outs: list[list[int]] = [[], [], [], []]
    rules = {0: (3, 5, ()), 1: (2, 6, (1,)), 2: (4, 20, ()), 3: (1, 40, ())}
    for i in (0, 1):
        rows.add(i, rules[i], outs[i])
    live = {0: 0, 1: 1}  # batch row -> request
    for step in range(90):
        if step == 25:
            rows.add(2, rules[2], outs[2])
            live[2] = 2
        if step == 40:
            rows.swap(0, 2)
            live[0], live[2] = live[2], live[0]
        if step == 55:
            rows.add(3, rules[3], outs[3])  # window 40 > width 32: capped, like MAX_WINDOW
            live[3] = 3
        if step == 70:
            rows.remove(1)
            rows.move(3, 1)
            live[1] = live.pop(3)
        logits = torch.zeros(4, 4)
        rows.apply(logits)
        for i, req in live.items():
            n, window, whitelist = rules[req]
            got = set(torch.nonzero(torch.isinf(logits[i])).flatten().tolist())
            assert got == reference_bans(outs[req], n, min(window, 32), set(whitelist)), (step, i)
        for req in live.values():
            outs[req].append(rng.choice([0, 0, 1, 2, 3]))
    assert rows.span == 32
