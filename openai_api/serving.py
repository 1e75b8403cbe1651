"""The logic behind /v1: an OpenAI chat-completions request -> our engine call -> a response or an SSE stream.

A request holds exactly one image_url part (a data: URL, or http(s) fetched under the same SSRF rules as
every image_url); the text parts of that message are the prompt (catalogue names accepted; none = the
default document prompt). System messages are ignored. vLLM's extras (skip_special_tokens, ignore_eos,
vllm_xargs for the repetition guard, mm_processor_kwargs) and our `mode` / `target` are honoured.
Errors are rendered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

import intake
import pipeline
from config import Settings
from deepseek_ocr import OCREngine, OCRResult
from errors import InputError
from inputs import decode_base64, fetch_url
from ocr_utils import strip_special_tokens
from openai_api.protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    DeltaMessage,
    ImagePart,
    ModelCard,
    ModelList,
    StreamChoice,
    TextPart,
    UsageInfo,
)
from process.image_process import get_mode

OWNER = "deepseek-ocr-service"
STARTED = int(time.time())
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


# --- errors in OpenAI's shape ----------------------------------------------------------------


def openai_error(
    status: int, code: str, message: str, *, param: str | None = None, accepted: list | None = None, headers=None
) -> JSONResponse:
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    err: dict = {"message": message, "type": kind, "param": param, "code": code}
    if accepted is not None:
        err["accepted"] = accepted
    return JSONResponse({"error": err}, status_code=status, headers=headers)


def input_error_response(exc: InputError) -> JSONResponse:
    return openai_error(exc.status, exc.code, exc.message, accepted=exc.accepted, headers=exc.headers)


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    problems = [(".".join(str(p) for p in e.get("loc", ())[1:]) or "body", e.get("msg", "")) for e in exc.errors()]
    message = "; ".join(f"{f}: {p}" for f, p in problems) or "invalid request"
    return openai_error(422, "invalid_request", message, param=problems[0][0] if problems else None)


# --- models ----------------------------------------------------------------------------------


def list_models(engine: OCREngine, settings: Settings) -> ModelList:
    """The one model this service serves; 503 until the engine is ready (a readiness check for fronts)."""
    if not engine.ready:
        raise engine.not_ready()
    card = ModelCard(id=engine.model_name, created=STARTED, owned_by=OWNER, max_model_len=settings.max_model_len)
    return ModelList(data=[card])


# --- request -> engine options ----------------------------------------------------------------


@dataclass
class ChatInput:
    image_url: str
    prompt: str | None
    options: dict = field(default_factory=dict)


def resolve_mode(body: ChatCompletionRequest, engine: OCREngine) -> str | None:
    """`mode` by name, or mm_processor_kwargs matched against the engine's resolution modes; both must agree."""
    modes = engine.modes
    named = get_mode(body.mode, modes=modes).name if body.mode else None
    kw = body.mm_processor_kwargs
    if kw is None:
        return named
    d = modes[engine.default_mode()]
    crop = d.crop_mode if kw.crop_mode is None else kw.crop_mode
    want = (kw.base_size or d.base_size, kw.image_size or d.image_size, crop)
    found = [m.name for m in modes.values() if (m.base_size, m.image_size, m.crop_mode) == want]
    if not found:
        accepted = [
            {"mode": m.name, "base_size": m.base_size, "image_size": m.image_size, "crop_mode": m.crop_mode}
            for m in modes.values()
        ]
        raise InputError(
            422, "bad_mode",
            f"mm_processor_kwargs base_size={want[0]}, image_size={want[1]}, crop_mode={want[2]} is no resolution mode",
            accepted=accepted,
        )  # fmt: skip
    if named and named != found[0]:
        raise InputError(400, "conflicting_mode", f"mode {named!r} and mm_processor_kwargs ({found[0]}) disagree")
    return found[0]


def parse(body: ChatCompletionRequest, engine: OCREngine) -> ChatInput:
    images: list[tuple[int, str]] = []
    texts: dict[int, list[str]] = {}
    for i, msg in enumerate(body.messages):
        if msg.role != "user":
            continue  # system prompts do not steer DeepSeek-OCR; earlier answers are not input
        parts = [TextPart(type="text", text=msg.content)] if isinstance(msg.content, str) else msg.content or []
        for part in parts:
            if isinstance(part, ImagePart):
                images.append((i, part.image_url.url))
            else:
                texts.setdefault(i, []).append(part.text)
    if len(images) != 1:
        raise InputError(
            400, "need_one_image",
            f"a request needs exactly one image_url content part in a user message; got {len(images)}",
            accepted=["data:image/png;base64,...", "https://host/page.png"],
        )  # fmt: skip
    where, url = images[0]
    prompt = "\n".join(t for t in texts.get(where, []) if t.strip()) or None
    xargs = body.vllm_xargs
    options = {
        "mode": resolve_mode(body, engine),
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "temperature": body.temperature or 0.0,
        "target": body.target,
        "ignore_eos": body.ignore_eos,
        "ngram_size": xargs.ngram_size if xargs else None,
        "ngram_window": xargs.window_size if xargs else None,
        "ngram_whitelist": xargs.whitelist_token_ids if xargs else None,
    }
    return ChatInput(url, prompt, options)


async def image_bytes(url: str, settings: Settings) -> bytes:
    """A data: URL is decoded; anything else is fetched under the URL rules (http(s), public hosts)."""
    if url.strip().startswith("data:"):
        return decode_base64(url, settings.max_upload_bytes, "image_url")
    return await fetch_url(url.strip(), settings, settings.max_upload_bytes)


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "abort" if reason == "cancelled" else "stop"


def _usage(res: OCRResult) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=res.prompt_tokens,
        completion_tokens=res.output_tokens,
        total_tokens=res.prompt_tokens + res.output_tokens,
    )


async def _prepare(request: Request, body: ChatCompletionRequest) -> tuple[OCREngine, Settings, ChatInput, bytes]:
    engine, settings = pipeline.engine_of(request), pipeline.settings_of(request)
    chat = parse(body, engine)
    # Cheap checks (prompt, mode, engine) before fetching or decoding anything.
    pipeline.validate(engine, settings, chat.prompt, chat.options["mode"], chat.options["target"])
    return engine, settings, chat, await image_bytes(chat.image_url, settings)


# --- completions ------------------------------------------------------------------------------


async def complete(request: Request, body: ChatCompletionRequest) -> ChatCompletionResponse:
    engine, settings, chat, data = await _prepare(request, body)
    page = await pipeline.ocr_image_bytes(engine, settings, data, chat.prompt, **chat.options)
    content = strip_special_tokens(page.raw) if body.skip_special_tokens else page.raw
    return ChatCompletionResponse(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=engine.model_name,
        choices=[Choice(message=AssistantMessage(content=content), finish_reason=_finish(page.result.finish_reason))],
        usage=_usage(page.result),
    )


async def stream(request: Request, body: ChatCompletionRequest) -> StreamingResponse:
    """OpenAI's SSE chunks: the role, content deltas, the finish reason, usage if asked, then [DONE].
    Errors before the first delta get a proper HTTP status; later ones an error event, then [DONE]."""
    engine, settings, chat, data = await _prepare(request, body)
    if not engine.ready:
        raise engine.not_ready()
    image, _, source = await pipeline.decode_page(engine, settings, data)
    req = pipeline.build_request(settings, image, chat.prompt, engine=engine, source=source, **chat.options)
    intake.handed_off()
    items = engine.stream_result(req)
    first = await anext(items)  # raises here (not inside the 200 stream) when nothing could start
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), engine.model_name
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: DeltaMessage, finish: str | None = None, usage: UsageInfo | None = None, choices=True) -> str:
        c = ChatCompletionChunk(
            id=cid, created=created, model=model, usage=usage,
            choices=[StreamChoice(delta=delta, finish_reason=finish)] if choices else [],
        )  # fmt: skip
        return f"data: {c.model_dump_json(exclude_none=True)}\n\n"

    async def rest() -> AsyncIterator[str | OCRResult]:
        async with aclosing(items):  # closed (so the engine's request ends) as soon as the stream ends
            yield first
            async for item in items:
                yield item

    async def events() -> AsyncIterator[str]:
        yield chunk(DeltaMessage(role="assistant", content=""))
        final: OCRResult | None = None
        try:
            async with aclosing(rest()) as it:  # a client that leaves closes this generator, and so the engine's
                async for item in it:
                    if isinstance(item, OCRResult):
                        final = item
                    elif text := strip_special_tokens(item) if body.skip_special_tokens else item:
                        yield chunk(DeltaMessage(content=text))
        except InputError as e:
            err = json.loads(input_error_response(e).body)
            yield f"data: {json.dumps(err)}\n\n"
            yield "data: [DONE]\n\n"
            return
        yield chunk(DeltaMessage(), finish=_finish(final.finish_reason if final else "stop"))
        if include_usage and final is not None:
            yield chunk(DeltaMessage(), usage=_usage(final), choices=False)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
