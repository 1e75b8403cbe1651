"""Prometheus metrics (prometheus_client): requests, latency, pages, tokens, engine queue and busy time."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

REQUESTS = Counter("ocr_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "ocr_request_seconds", "HTTP request latency", ["route"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)  # fmt: skip
PAGES = Counter("ocr_pages_total", "pages (images) through the engine", ["engine", "outcome"])
TOKENS = Counter("ocr_tokens_total", "tokens through the engine", ["engine", "kind"])
IN_FLIGHT = Gauge("ocr_engine_in_flight", "requests the engine is running")
QUEUE = Gauge("ocr_engine_queue_depth", "requests waiting for an engine slot")
INTAKE_WAITING = Gauge("ocr_intake_waiting", "requests waiting, in arrival order, to read their upload (intake.py)")
BUSY = Counter("ocr_engine_busy_seconds_total", "seconds the engine spent running requests (summed)")


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(route).observe(seconds)


def observe_page(engine: str, ok: bool, prompt_tokens: int = 0, output_tokens: int = 0, busy_s: float = 0.0) -> None:
    PAGES.labels(engine, "ok" if ok else "error").inc()
    if ok:
        TOKENS.labels(engine, "prompt").inc(prompt_tokens)
        TOKENS.labels(engine, "output").inc(output_tokens)
    BUSY.inc(busy_s)


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
