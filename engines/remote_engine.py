"""The remote engine (ENGINE=remote): pages go to OpenAI-compatible DeepSeek-OCR servers at REMOTE_URLS.

A backend is `vllm serve deepseek-ai/DeepSeek-OCR ...` or another instance of this service (its /v1).
- Each page goes to the up backend with the fewest requests outstanding, at most REMOTE_CONCURRENCY each.
- A health check (GET /v1/models every REMOTE_HEALTH_INTERVAL_S) takes a dead backend out, puts it back,
  and learns the model name to send. A refused connection takes a backend out at once.
- A page whose backend fails (connection error, 5xx) is retried once on another backend (on the same one
  only if it is the only one up and still in); with no backend
  up the answer is 503 engine_unavailable with the reason. A 4xx (the request's fault) is passed on.
- The page travels as a data URL: the uploaded file itself when it decodes to exactly the page (an upright
  RGB PNG or JPEG: no re-encode), else the page re-encoded as a PNG (or JPEG: REMOTE_IMAGE_FORMAT). The chat
  request has the extra fields vLLM understands: skip_special_tokens=false, vllm_xargs (repetition guard),
  mm_processor_kwargs (non-Gundam modes), ignore_eos, max_tokens, temperature.
The client is httpx (already a dependency) rather than the openai package: one pooled client, our own
failover (the SDK's retries would go to the same backend), and vLLM's extra fields as plain JSON.
REMOTE_URLS are operator configuration: they do not go through the image_url SSRF rules.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass

import httpx
from PIL import Image

from config import Settings
from deepseek_ocr import EngineUnavailable, OCREngine, OCRRequest, OCRResult, Task
from engines.vllm_engine import mm_kwargs
from errors import InputError
from process.image_process import decoded

log = logging.getLogger("ocr.remote")
# Statuses that say the backend (or its configuration), not the request, is at fault: try another.
BACKEND_FAULTS = {401, 403, 404, 408, 429}


@dataclass
class Backend:
    url: str  # base URL, no /v1
    limit: int
    up: bool = False
    model: str | None = None
    owned_by: str | None = None  # "vllm" for `vllm serve`
    outstanding: int = 0
    picked: int = 0
    completed: int = 0
    failures: int = 0
    last_error: str | None = None
    checked_at: float | None = None
    max_model_len: int | None = None  # the context length its model card gives (vLLM's does)

    def info(self) -> dict:
        return {
            "url": self.url,
            "state": "up" if self.up else "down",
            "model": self.model,
            "server": self.owned_by,
            "outstanding": self.outstanding,
            "limit": self.limit,
            "completed": self.completed,
            "failures": self.failures,
            "last_error": self.last_error,
            "checked_s_ago": None if self.checked_at is None else round(time.time() - self.checked_at, 1),
        }


class BackendFailed(Exception):
    """The backend failed, not the request: another backend may answer it."""

    def __init__(self, backend: Backend, reason: str):
        super().__init__(f"{backend.url}: {reason}")
        self.backend = backend
        self.reason = reason


def data_url(image: Image.Image, fmt: str) -> str:
    """The page as a data URL: PNG (lossless, fast compression) or JPEG (quality 95)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, "JPEG", quality=95)
    else:
        image.save(buf, "PNG", compress_level=1)
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def page_url(req: OCRRequest, fmt: str) -> str:
    """The page's data URL: its original file when that decodes to exactly req.image (no re-encode, and a
    smaller payload than a fast PNG), else req.image re-encoded as `fmt`."""
    if req.source is None:
        return data_url(req.image, fmt)
    mime, data = req.source
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


TEXT_TOKENS_MARGIN = 64  # the prompt's text tokens (the default prompts take 10-20), counted generously


def output_budget(req: OCRRequest, max_model_len: int | None) -> int | None:
    """max_tokens to ask the backend for, or None to let it fill the rest of the context. vLLM in this process
    stops a page at the end of the context; `vllm serve` instead refuses a request whose prompt + max_tokens
    exceeds it (400), and the default MAX_TOKENS equals the default MAX_MODEL_LEN. The page's image tokens are
    known exactly (the tile plan); when the request asks for about the whole rest, the server's own default
    (max_model_len - prompt tokens) is the same answer."""
    if max_model_len is None or req.max_tokens + req.plan.image_tokens + TEXT_TOKENS_MARGIN <= max_model_len:
        return req.max_tokens
    return None


def chat_body(req: OCRRequest, model: str, image_url: str, *, stream: bool, max_model_len: int | None = None) -> dict:
    """One page as a chat-completions request, as vLLM's OpenAI server (and this service's /v1) take it."""
    text = req.spec.prompt.removeprefix("<image>").lstrip("\n")  # the server adds the image placeholder itself
    body: dict = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": text}],
            }
        ],
        "temperature": req.temperature,
        "skip_special_tokens": False,  # grounding tokens must survive
        "ignore_eos": req.ignore_eos,
        "stream": stream,
        "mm_processor_kwargs": mm_kwargs(req.mode),  # the resolution mode (vLLM with this service's plugin)
    }
    if (max_tokens := output_budget(req, max_model_len)) is not None:
        body["max_tokens"] = max_tokens
    if req.ngram_size > 0:  # no vllm_xargs = no guard on vLLM (its processor refuses ngram_size=0)
        body["vllm_xargs"] = {
            "ngram_size": req.ngram_size,
            "window_size": req.ngram_window,
            "whitelist_token_ids": list(req.ngram_whitelist),
        }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def error_of(content: bytes, status: int) -> tuple[str, str, list | None]:
    """(message, code, accepted) of an error answer: OpenAI's shape, vLLM's older one, or ours."""
    try:
        body = json.loads(content)
    except ValueError:
        return content[:200].decode("utf-8", "replace") or f"HTTP {status}", "backend_rejected", None
    err = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    message, code, accepted = err.get("message"), err.get("code"), err.get("accepted")
    return (
        str(message or f"HTTP {status}"),
        code if isinstance(code, str) else "backend_rejected",
        accepted if isinstance(accepted, list) else None,
    )


class RemoteEngine(OCREngine):
    name = "remote"
    tasks = frozenset(Task)  # the backend decides; its 422 is passed on
    lazy_pages = True  # an upright RGB PNG/JPEG goes on as uploaded: it is decoded by the backend, not here

    def __init__(self, settings: Settings):
        self.backends = [Backend(url, settings.remote_concurrency) for url in settings.remote_urls]
        super().__init__(settings)
        self._wake = asyncio.Event()  # set (and replaced) whenever a backend frees up or changes state
        self._client: httpx.AsyncClient | None = None
        self._health: asyncio.Task | None = None

    def capacity(self) -> int:
        """Pages in flight across all backends, so PDFs, batches and jobs keep every backend busy."""
        return max(1, sum(b.limit for b in self.backends))

    async def start(self) -> None:
        if not self.backends:
            self.error = "REMOTE_URLS is empty: give the base URLs of OpenAI-compatible DeepSeek-OCR servers"
            return
        # Idle connections are dropped before the server's keep-alive (uvicorn, vLLM: 5 s) would close them.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=self.capacity(), keepalive_expiry=3)
        self._client = self.make_client(limits=limits)
        await self.check_backends()
        self._health = asyncio.create_task(self._health_loop())

    def make_client(self, **kw) -> httpx.AsyncClient:
        """An httpx client to the backends: no read timeout (REQUEST_TIMEOUT_S bounds each page), the API key."""
        headers = {"User-Agent": "deepseek-ocr-service"}
        if self.settings.remote_api_key:
            headers["Authorization"] = f"Bearer {self.settings.remote_api_key}"
        timeout = httpx.Timeout(None, connect=self.settings.remote_connect_timeout_s)
        return httpx.AsyncClient(timeout=timeout, headers=headers, trust_env=False, **kw)

    @asynccontextmanager
    async def connection(self, b: Backend) -> AsyncIterator[httpx.AsyncClient]:
        """The client that a page to `b` goes through (the managed child: a lane to its least busy API process)."""
        assert self._client is not None
        yield self._client

    async def stop(self) -> None:
        await super().stop()
        if self._health:
            self._health.cancel()
        if self._client:
            await self._client.aclose()

    # --- health ---------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.remote_health_interval_s)
            try:
                await self.check_backends()
            except Exception:  # never let the loop die
                log.exception("health check failed")

    async def check_backends(self) -> None:
        await asyncio.gather(*(self._check(b) for b in self.backends))
        self._changed()

    async def _check(self, b: Backend) -> None:
        assert self._client is not None
        try:
            r = await self._client.get(f"{b.url}/v1/models", timeout=self.settings.remote_connect_timeout_s)
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}: {error_of(r.content, r.status_code)[0]}")
            cards = r.json()["data"]
            if not cards:
                raise ValueError("no model is listed")
            models = [m["id"] for m in cards]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            if b.up or b.checked_at is None:
                log.warning("backend %s is down: %s: %s", b.url, type(e).__name__, e)
            b.up, b.last_error = False, f"health check: {type(e).__name__}: {e}"
        else:
            if not b.up:
                log.info("backend %s is up (model %s)", b.url, models[0])
            b.up, b.model, b.owned_by = True, models[0], cards[0].get("owned_by")
            if isinstance(context := cards[0].get("max_model_len"), int):
                b.max_model_len = context
        b.checked_at = time.time()

    def _changed(self) -> None:
        up = [b for b in self.backends if b.up]
        self.ready = bool(up)
        self.error = None if up else self._down_reason()
        if up:
            self.model_name = up[0].model or self.model_name
        self._wake.set()
        self._wake = asyncio.Event()

    def _down_reason(self) -> str:
        return "no backend is up: " + "; ".join(f"{b.url}: {b.last_error}" for b in self.backends)

    def _failed(self, b: Backend, reason: str, *, down: bool = False) -> BackendFailed:
        b.failures += 1
        b.last_error = reason
        if down and b.up:
            log.warning("backend %s taken out: %s", b.url, reason)
            b.up = False
            self._changed()
        return BackendFailed(b, reason)

    def _transport_failed(self, b: Backend, e: httpx.TransportError) -> BackendFailed:
        """Cannot connect: out until the health check sees it again. Reset mid-answer: retry, keep it in."""
        down = isinstance(e, httpx.ConnectError | httpx.ConnectTimeout)
        return self._failed(b, f"{type(e).__name__}: {e}", down=down)

    # --- balancing ------------------------------------------------------------------------

    async def _acquire(self, tried: list[BackendFailed]) -> Backend:
        """The up backend with the fewest outstanding requests and room left; waits while all are full."""
        excluded = {id(f.backend) for f in tried}
        while True:
            up = [b for b in self.backends if b.up]
            # Another backend if there is one; the same one again only when it is the only one up.
            up = [b for b in up if id(b) not in excluded] or up
            if not up:
                if tried:
                    raise EngineUnavailable(f"backend {tried[-1]} failed and no other backend is up")
                # self.error may not be set yet: a health check marks backends down before it calls _changed
                raise EngineUnavailable(self.error or self._down_reason())
            free = [b for b in up if b.outstanding < b.limit]
            if free:
                b = min(free, key=lambda b: (b.outstanding, b.picked))
                b.outstanding += 1
                b.picked += 1
                return b
            await self._wake.wait()

    def _release(self, b: Backend) -> None:
        b.outstanding -= 1
        self._wake.set()
        self._wake = asyncio.Event()

    def _check_status(self, b: Backend, status: int, content: bytes) -> None:
        if status < 400:
            return
        message, code, accepted = error_of(content, status)
        if status >= 500 or status in BACKEND_FAULTS:
            raise self._failed(b, f"HTTP {status}: {message}")
        raise InputError(status, code, f"the OCR backend refused the page: {message}", accepted=accepted)

    @staticmethod
    def _gave_up(tried: list[BackendFailed]) -> InputError:
        return InputError(502, "backend_failed", "the page failed on two backends: " + "; ".join(map(str, tried)))

    # --- one page -------------------------------------------------------------------------

    @asynccontextmanager
    async def page_ref(self, req: OCRRequest) -> AsyncIterator[str]:
        """The page's image_url for as long as the page is in flight (here: its data URL)."""
        yield await asyncio.to_thread(page_url, req, self.settings.remote_image_format)

    async def _failure(self, req: OCRRequest, e: InputError) -> InputError:
        """What a page that failed on the backend is answered with. A page sent on undecoded (load_page's `lazy`)
        may be a corrupt file: then that is the answer (422 corrupt_image), not the backend's refusal or failure."""
        if e.status == 503 or req.source is None:  # the engine is down; a page decoded here was whole
            return e
        try:
            await asyncio.to_thread(decoded, req.image)
        except InputError as corrupt:
            return corrupt
        return e

    @asynccontextmanager
    async def _failures_answered(self, req: OCRRequest) -> AsyncIterator[None]:
        """The page's InputError raised inside, replaced by `_failure`'s answer where that is another one."""
        try:
            yield
        except InputError as e:
            answer = await self._failure(req, e)
            if answer is e:
                raise
            raise answer from e

    async def _run(self, req: OCRRequest) -> OCRResult:
        async with self._failures_answered(req):
            return await self._send(req)

    async def _send(self, req: OCRRequest) -> OCRResult:
        t0 = time.perf_counter()
        async with self.page_ref(req) as image_url:
            encode_s = time.perf_counter() - t0
            tried: list[BackendFailed] = []
            while True:
                b = await self._acquire(tried)
                try:
                    res = await self._call(b, req, image_url)
                except BackendFailed as e:
                    tried.append(e)
                    if len(tried) > 1:
                        raise self._gave_up(tried) from e
                    log.warning("retrying a page elsewhere: %s", e)
                    continue
                finally:
                    self._release(b)
                res.timings["encode"] = round(encode_s, 4)
                return res

    def _body(self, b: Backend, req: OCRRequest, image_url: str, *, stream: bool) -> dict:
        # Every mode travels as mm_processor_kwargs: `vllm serve` runs them with this service's plugin installed
        # (vllm_plugin/), as this service's own /v1 does.
        return chat_body(req, b.model or self.model_name, image_url, stream=stream, max_model_len=b.max_model_len)

    async def _call(self, b: Backend, req: OCRRequest, image_url: str) -> OCRResult:
        body = self._body(b, req, image_url, stream=False)
        t0 = time.perf_counter()
        try:
            async with self.connection(b) as client:
                r = await client.post(f"{b.url}/v1/chat/completions", json=body)
        except httpx.TransportError as e:
            raise self._transport_failed(b, e) from e
        self._check_status(b, r.status_code, r.content)
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise self._failed(b, f"unreadable answer: {type(e).__name__}: {e}") from e
        b.completed += 1
        return OCRResult(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason") or "stop",
            timings={"inference": round(time.perf_counter() - t0, 4)},
        )

    # --- streaming ------------------------------------------------------------------------

    async def stream_result(self, req: OCRRequest) -> AsyncIterator[str | OCRResult]:
        """Deltas from the backend's SSE stream; retried elsewhere only if it fails before the first one."""
        if not self.ready:
            raise self.not_ready()
        async with self._failures_answered(req), aclosing(self._stream_page(req)) as items:
            async for item in items:
                yield item

    async def _stream_page(self, req: OCRRequest) -> AsyncIterator[str | OCRResult]:
        async with self._slots, self.page_ref(req) as image_url:
            tried: list[BackendFailed] = []
            while True:
                b = await self._acquire(tried)
                started = False
                try:
                    async with aclosing(self._stream_from(b, req, image_url)) as items:
                        async for item in items:
                            started = True
                            yield item
                    return
                except BackendFailed as e:
                    tried.append(e)
                    if started:
                        raise InputError(502, "backend_failed", f"the backend failed mid-answer: {e}") from e
                    if len(tried) > 1:
                        raise self._gave_up(tried) from e
                finally:
                    self._release(b)

    async def _stream_from(self, b: Backend, req: OCRRequest, image_url: str) -> AsyncIterator[str | OCRResult]:
        body = self._body(b, req, image_url, stream=True)
        t0 = time.perf_counter()
        pieces: list[str] = []
        usage: dict = {}
        finish = None
        try:
            async with (
                self.connection(b) as client,
                client.stream("POST", f"{b.url}/v1/chat/completions", json=body) as r,
            ):
                if r.status_code >= 400:
                    self._check_status(b, r.status_code, await r.aread())
                async for line in r.aiter_lines():
                    payload = line.removeprefix("data:").strip()
                    if not line.startswith("data:") or not payload:
                        continue
                    if payload == "[DONE]":
                        break
                    try:
                        event = json.loads(payload)
                    except ValueError as e:
                        raise self._failed(b, f"unreadable event: {payload[:100]}") from e
                    if "error" in event:
                        raise self._failed(b, f"error event: {error_of(payload.encode(), 500)[0]}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or ():
                        finish = choice.get("finish_reason") or finish
                        if text := (choice.get("delta") or {}).get("content"):
                            pieces.append(text)
                            yield text
        except httpx.TransportError as e:
            raise self._transport_failed(b, e) from e
        b.completed += 1
        yield OCRResult(
            text="".join(pieces),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=finish or "stop",
            timings={"inference": round(time.perf_counter() - t0, 4)},
        )

    def info(self) -> dict:
        return {
            **super().info(),
            "backends": [b.info() for b in self.backends],
            "health_interval_s": self.settings.remote_health_interval_s,
        }
