"""The vLLM stat-logger plugin (engines/vllm_front_stats.py): each request's time before vLLM's engine queue as a
histogram, and the bench's quantile from its buckets. vLLM is not installed here: its FinishedRequestStats and
IterationStats are stood in for by objects with the fields the plugin reads; vLLM loading the entry point is
checked on the GPU (bench/gpu_bench.py reports vllm_front_p50_s from it)."""

from __future__ import annotations

import importlib
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from prometheus_client import REGISTRY

from engines.vllm_front_stats import FETCHED, FRONT, PREP, FrontTimes, front_seconds, observe_prep

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from gpu_bench import FRONT_HISTOGRAM, PREP_HISTOGRAM, VLLM_TIMES, bucket_quantile, vllm_front  # noqa: E402


def finished(e2e: float, queued: float, inference: float) -> SimpleNamespace:
    return SimpleNamespace(e2e_latency=e2e, queued_time=queued, inference_time=inference)


def bucket(le: str, name: str = FRONT_HISTOGRAM) -> float:
    return REGISTRY.get_sample_value(f"{name}_bucket", {"le": le}) or 0.0


def test_the_front_is_what_e2e_leaves_after_queue_and_inference():
    assert front_seconds(finished(10.0, 3.0, 6.5)) == pytest.approx(0.5)
    assert front_seconds(finished(1.0, 0.6, 0.5)) == 0.0  # clocks of two processes: never negative


def test_each_finished_request_lands_in_its_bucket():
    logger = FrontTimes(None, 0)
    before = {le: bucket(le) for le in ("0.1", "0.5", "1.0", "+Inf")}
    stats = SimpleNamespace(finished_requests=[finished(20.0, 4.0, 15.95), finished(20.0, 4.0, 15.6),
                                               finished(30.0, 1.0, 28.2)])  # fmt: skip  # 0.05, 0.4, 0.8 s
    logger.record(None, stats)
    logger.record(SimpleNamespace(), None)  # scheduler stats alone: nothing finished
    moved = {le: bucket(le) - before[le] for le in before}
    assert moved == {"0.1": 1, "0.5": 2, "1.0": 3, "+Inf": 3}
    assert FRONT._name == FRONT_HISTOGRAM  # the name the bench reads


def test_the_plugin_declares_both_entry_points_and_they_load():
    project = tomllib.loads((ROOT / "vllm_plugin" / "pyproject.toml").read_text())["project"]["entry-points"]
    targets = [*project["vllm.general_plugins"].values(), *project["vllm.stat_logger_plugins"].values()]
    assert "engines.vllm_front_stats:FrontTimes" in targets
    for target in targets:
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))


def test_quantiles_come_from_bucket_counts():
    cumulative = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, float("inf"): 40.0}
    assert bucket_quantile(cumulative, 0.5) == pytest.approx(0.3)  # 20th of 40: half-way through (0.1, 0.5]
    assert bucket_quantile(cumulative, 0.25) == pytest.approx(0.1)
    assert bucket_quantile(cumulative, 0.9) == pytest.approx(0.8)
    assert bucket_quantile({0.5: 0.0, float("inf"): 0.0}, 0.5) is None
    assert bucket_quantile({0.5: 1.0, float("inf"): 4.0}, 0.9) == 0.5  # past the last bound: its lower edge


def test_prep_times_the_pages_the_loader_stamped():
    before = {le: bucket(le, PREP_HISTOGRAM) for le in ("0.05", "0.5", "+Inf")}
    recent, older, unstamped = torch.zeros(2, 2, 3), torch.zeros(2, 2, 3), torch.zeros(2, 2, 3)
    setattr(recent, FETCHED, time.time())
    setattr(older, FETCHED, time.time() - 0.3)
    observe_prep([recent, older, unstamped, object()])  # a Pillow page (vLLM's own loader) is not timed
    moved = {le: bucket(le, PREP_HISTOGRAM) - before[le] for le in before}
    assert moved == {"0.05": 1, "0.5": 2, "+Inf": 2}
    assert PREP._name == PREP_HISTOGRAM


def test_the_bench_reports_both_histograms_quantiles():
    before = {f"{t}_{part}": 0.0 for t in VLLM_TIMES for part in ("sum", "count")}
    after = {**before, **{f"{t}_count": 10.0 for t in VLLM_TIMES}, "e2e_request_latency_sum": 100.0,
             "request_queue_time_sum": 30.0, "request_inference_time_sum": 65.0}  # fmt: skip
    after |= {"front le=0.5": 2.0, "front le=1.0": 10.0, "front le=+Inf": 10.0}
    after |= {"prep le=0.05": 8.0, "prep le=0.1": 10.0, "prep le=+Inf": 10.0}
    got = vllm_front(before, after)
    assert got["vllm_front_mean_s"] == 0.5
    assert got["vllm_front_p50_s"] == pytest.approx(0.5 + 0.5 * 3 / 8, abs=1e-3)
    assert got["vllm_prep_p50_s"] == pytest.approx(0.05 * 5 / 8, abs=1e-3)
    assert got["vllm_prep_p90_s"] == pytest.approx(0.075, abs=1e-3)
