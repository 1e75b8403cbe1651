"""vLLM stat-logger plugin (entry point in vllm_plugin/pyproject.toml): each request's time before vLLM's engine
queue, as the Prometheus histogram `ocr_vllm_front_seconds`; and the part of it that is preprocessing,
`ocr_vllm_prep_seconds`.

vLLM's own histograms give that time only as a difference of means (e2e - queue - inference): no median, no tail.
It spans the time from the moment vLLM has the request (its renderer starts) until its engine core has it
queued: media loading, the processor, the hop to the engine core, and the wait for the engine core's current step
to end. vLLM builds one per API process (`vllm serve`) or per in-process engine; with several API processes
prometheus_client's multiprocess mode sums them, as it does vLLM's own metrics.
Without vLLM (CI, the CPU engine) the class is a plain object and the arithmetic stays testable.

Under a burst that wait dominates (0.6-0.9 s encoder steps: vLLM takes new requests only between steps), so
`ocr_vllm_prep_seconds` gives the API process's own part, timed on the page itself: from the page file's load
(engines/vllm_page_loader.py stamps the tensor) to the DEVICE_VIEWS processor's output (engines/vllm_modes.py),
waits for the renderer's thread included.
"""

from __future__ import annotations

import time
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

PREP = Histogram(
    "ocr_vllm_prep_seconds",
    "seconds from vLLM loading a page file to the processor's output, in vLLM's API process (page files only)",
    buckets=BUCKETS,
)
FETCHED = "ocr_fetched_at"  # the attribute engines/vllm_page_loader.py stamps on a page tensor (time.time())


def observe_prep(pages: Iterable[object]) -> None:
    """Each stamped page's time from its load until now (the processor has its output); others are not timed."""
    now = time.time()
    for page in pages:
        if (t0 := getattr(page, FETCHED, None)) is not None:
            PREP.observe(max(0.0, now - t0))


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
