"""vLLM stat-logger plugin (entry point in vllm_plugin/pyproject.toml): each request's time before vLLM's engine
queue, as the Prometheus histogram `ocr_vllm_front_seconds`.

vLLM's own histograms give that time only as a difference of means (e2e - queue - inference): no median, no tail.
This is the wait the preprocessing target is about: from the moment vLLM has the request (its renderer starts)
until its engine core has it queued: media loading, the processor, the hop to the engine core, and the wait for
the engine core's current step to end. vLLM builds one per API process (`vllm serve`) or per in-process engine;
with several API processes prometheus_client's multiprocess mode sums them, as it does vLLM's own metrics.
Without vLLM (CI, the CPU engine) the class is a plain object and the arithmetic stays testable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import Histogram

try:
    from vllm.v1.metrics.loggers import StatLoggerBase
except ImportError:  # no vLLM here: nothing loads the plugin
    StatLoggerBase = object  # type: ignore[assignment,misc]

BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1, 1.25, 1.5, 2, 3, 5, 10, 30)
FRONT = Histogram(
    "ocr_vllm_front_seconds",
    "seconds from vLLM receiving a request until its engine core queued it (input processing, the hop, the step)",
    buckets=BUCKETS,
)


class Finished(Protocol):
    """What is read of vLLM's FinishedRequestStats."""

    e2e_latency: float
    queued_time: float
    inference_time: float


def front_seconds(done: Finished) -> float:
    """vLLM's arrival-to-queued time of a finished request (its e2e latency less its queue and inference times)."""
    return max(0.0, done.e2e_latency - done.queued_time - done.inference_time)


def observe(finished: Iterable[Finished]) -> None:
    for done in finished:
        FRONT.observe(front_seconds(done))


class FrontTimes(StatLoggerBase):
    """Records every finished request's front time; vLLM calls `record` after each batch of engine outputs."""

    def __init__(self, vllm_config: Any = None, engine_index: int = 0):
        self.engine_index = engine_index

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0):
        if iteration_stats is not None:
            observe(iteration_stats.finished_requests)

    def log_engine_initialized(self) -> None:
        pass
