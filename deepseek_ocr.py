"""The engine seam: the one async interface every router uses, the prompt catalogue, and engine selection.

An engine takes a page image + prompt + options and returns DeepSeek-OCR's raw text (grounding tokens
kept), token counts and timings. Two engines sit behind it: vLLM's native DeepSeek-OCR (GPU) and the
embedded CPU engine (RapidOCR) that answers the same prompts with the same output structure.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from PIL import Image

import metrics
from config import Settings
from errors import InputError
from process.image_process import MODES, ResolutionMode, TilePlan, default_mode

log = logging.getLogger("ocr.engine")

# The official prompt catalogue (DeepSeek-OCR README); names usable wherever a prompt is accepted.
PROMPTS: dict[str, str] = {
    "document": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "markdown": "<image>\nConvert the document to markdown.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
    "locate": "<image>\nLocate <|ref|>{target}<|/ref|> in the image.",
}
DEFAULT_PROMPT = PROMPTS["document"]


class Task(enum.StrEnum):
    DOCUMENT_GROUNDED = "document_grounded"  # markdown + a box per block
    OCR_GROUNDED = "ocr_grounded"  # a box per text line
    FREE_OCR = "free_ocr"  # plain text in reading order
    MARKDOWN = "markdown"  # markdown, no boxes
    LOCATE = "locate"  # boxes of a given text
    FIGURE = "figure"
    DESCRIBE = "describe"
    FREEFORM = "freeform"  # any other instruction


_LOCATE_RE = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>", re.S)
_TEXT_WORDS = re.compile(r"\b(ocr|text|extract|read|transcribe|markdown|convert)\b", re.I)


@dataclass(frozen=True)
class PromptSpec:
    prompt: str  # the full prompt sent to the model, <image> included
    task: Task
    target: str | None = None  # for LOCATE


def resolve_prompt(prompt: str | None, target: str | None = None) -> PromptSpec:
    """Catalogue name or free text -> the model prompt and what it asks for."""
    p = (prompt or "").strip() or DEFAULT_PROMPT
    if p.lower() in PROMPTS:
        key = p.lower()
        p = PROMPTS[key]
        if key == "locate":
            if not target:
                raise InputError(422, "missing_target", "the 'locate' prompt needs a target text to find")
            p = p.format(target=target)
    p = p.replace("\\n", "\n")
    if "<image>" not in p:
        p = "<image>\n" + p
    return PromptSpec(p, *classify(p))


def classify(prompt: str) -> tuple[Task, str | None]:
    body = prompt.replace("<image>", " ")
    low = body.lower()
    if "locate" in low and (m := _LOCATE_RE.search(body)):
        return Task.LOCATE, m.group(1).strip()
    grounding = "<|grounding|>" in low
    if "markdown" in low:
        return (Task.DOCUMENT_GROUNDED if grounding else Task.MARKDOWN), None
    if "free ocr" in low:
        return Task.FREE_OCR, None
    if grounding:
        return Task.OCR_GROUNDED, None
    if "parse the figure" in low or ("figure" in low and "parse" in low):
        return Task.FIGURE, None
    if "describe" in low:
        return Task.DESCRIBE, None
    if _TEXT_WORDS.search(low):
        return Task.FREE_OCR, None
    return Task.FREEFORM, None


@dataclass
class OCRRequest:
    image: Image.Image
    spec: PromptSpec
    mode: ResolutionMode
    plan: TilePlan
    max_tokens: int = 8192
    temperature: float = 0.0
    ngram_size: int = 30  # repetition guard; 0 = off
    ngram_window: int = 90
    ngram_whitelist: tuple[int, ...] = (128821, 128822)
    ignore_eos: bool = False
    tiling: bool = False  # run the page as tiles (crop_mode=tiling) where the engine supports it
    request_id: str = ""
    # The page's original file (MIME type, bytes), when decoding it gives exactly `image`: remote engines send
    # it as is instead of re-encoding `image`. The other engines ignore it.
    source: tuple[str, bytes] | None = None


@dataclass
class OCRResult:
    text: str  # raw model output, grounding tokens kept
    prompt_tokens: int
    output_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled"
    timings: dict[str, float] = field(default_factory=dict)  # seconds: queue, preprocess, inference, total
    warnings: list[str] = field(default_factory=list)  # what the engine could not do well on this page


class EngineUnavailable(InputError):
    def __init__(self, message: str):
        super().__init__(503, "engine_unavailable", message, headers={"Retry-After": "30"})


class OCREngine(ABC):
    """Base of every engine: readiness, a bound on requests in flight, and counters."""

    name: str = "engine"
    tasks: frozenset[Task] = frozenset()
    modes: dict[str, ResolutionMode] = MODES  # the resolution modes this engine's model runs
    token_strategy: str = "v1"  # image-token layout: v1 DeepSeek-OCR, v2 DeepSeek-OCR-2
    # True: this engine sends a page's original file on (OCRRequest.source) rather than its pixels, so such a page
    # is not decoded in this service unless something else needs its pixels (pipeline.decode_page).
    lazy_pages: bool = False

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ready = False
        self.error: str | None = None
        self.model_name = settings.model_path
        self._slots = asyncio.Semaphore(self.capacity())
        self.in_flight = 0
        self.waiting = 0
        self.admitted = 0  # single-image HTTP requests accepted and not finished (backpressure)
        self.completed = 0
        self.failed = 0
        self.busy_s = 0.0
        self.on_death: Callable[[str], None] | None = None  # the app's policy (serve_ocr.death_policy)

    def died(self, reason: str) -> None:
        """The engine can no longer work (its process died): refuse new work with 503 and the reason,
        and let the app's policy decide what happens to the process (exit so the container restarts)."""
        if not self.ready and self.error == reason:
            return
        log.error("engine died: %s", reason)
        self.ready = False
        self.error = reason
        if self.on_death:
            self.on_death(reason)

    def capacity(self) -> int:
        """Requests this engine really runs at once (more wait for a slot)."""
        return self.settings.max_concurrency

    def default_mode(self) -> str:
        s = self.settings
        return s.default_mode or default_mode(s.base_size, s.image_size, s.crop_mode, self.modes)

    @abstractmethod
    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.ready = False

    @abstractmethod
    async def _run(self, req: OCRRequest) -> OCRResult: ...

    def unsupported(self, task: Task) -> InputError:
        return InputError(
            422,
            "prompt_not_supported",
            f"the {self.name} engine cannot answer a '{task.value}' prompt; it needs the vllm engine "
            f"(DeepSeek-OCR weights on a GPU: ENGINE=vllm, MODEL_PATH=...)",
            accepted=[Task.DOCUMENT_GROUNDED.value, *sorted(t.value for t in self.tasks - {Task.DOCUMENT_GROUNDED})],
        )

    def not_ready(self) -> EngineUnavailable:
        """The 503 for a request that arrives before the engine is ready (or after it died)."""
        return EngineUnavailable(f"the {self.name} engine is not ready: {self.error or 'starting'}")

    async def generate(self, req: OCRRequest) -> OCRResult:
        if not self.ready:
            raise self.not_ready()
        if req.spec.task not in self.tasks:
            raise self.unsupported(req.spec.task)
        t0 = time.perf_counter()
        self.waiting += 1
        metrics.QUEUE.set(self.waiting)
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            metrics.QUEUE.set(self.waiting)
        queued = time.perf_counter() - t0
        self.in_flight += 1
        metrics.IN_FLIGHT.set(self.in_flight)
        ok = False
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):  # running time, not queueing
                res = await self._run(req)
            ok = True
        except TimeoutError as e:
            raise InputError(
                504, "timeout", f"OCR ran longer than {self.settings.request_timeout_s:.0f} s (REQUEST_TIMEOUT_S)"
            ) from e
        finally:
            busy = time.perf_counter() - t0 - queued
            self.in_flight -= 1
            metrics.IN_FLIGHT.set(self.in_flight)
            self._slots.release()
            self.busy_s += busy
            self.failed += not ok
            if ok:
                metrics.observe_page(self.name, True, res.prompt_tokens, res.output_tokens, busy)
            else:
                metrics.observe_page(self.name, False, busy_s=busy)
        self.completed += 1
        res.timings["queue"] = round(queued, 4)
        res.timings["total"] = round(time.perf_counter() - t0, 4)
        return res

    async def stream_result(self, req: OCRRequest) -> AsyncIterator[str | OCRResult]:
        """Text deltas as they are produced, then the final OCRResult (token counts, finish reason).
        Engines that cannot stream yield the whole text once; engines that can override this."""
        res = await self.generate(req)
        yield res.text
        yield res

    async def stream(self, req: OCRRequest) -> AsyncIterator[str]:
        """Text deltas only."""
        async for item in self.stream_result(req):
            if isinstance(item, str):
                yield item

    def info(self) -> dict:
        return {
            "engine": self.name,
            "model_name": self.model_name,
            "ready": self.ready,
            "error": self.error,
            "tasks": sorted(t.value for t in self.tasks),
            "max_concurrency": self.capacity(),
            "admitted": self.admitted,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "completed": self.completed,
            "failed": self.failed,
        }
