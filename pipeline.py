"""One page through the service: bytes -> image -> engine -> parsed result. Every router goes through here.

Decoding and post-processing run in worker threads, never on the event loop; the engine call has the
per-request timeout. The result object renders both our fields and seed 000's response fields.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from fastapi import Request, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image

import intake
import ocr_utils
from config import Settings
from deepseek_ocr import OCREngine, OCRRequest, OCRResult, PromptSpec, Task, resolve_prompt
from errors import InputError
from inputs import decode_base64, fetch_url, read_upload
from process.image_process import get_mode, load_page, plan_tiles


def engine_of(request: Request) -> OCREngine:
    return request.app.state.engine


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def jobs_of(request: Request):
    """The app's JobManager, or a 503 saying why the job queue is not running."""
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        reason = getattr(request.app.state, "jobs_error", None) or "not started"
        raise InputError(503, "jobs_unavailable", f"the job queue is not available: {reason}")
    return jobs


async def source_bytes(
    settings: Settings, kind: str, file: UploadFile | None, url: str | None, b64: str | None
) -> tuple[str, bytes]:
    """Exactly one of a multipart file, `{kind}_url` or `{kind}_base64` -> (a file name, the bytes)."""
    fields = (("file", file), (f"{kind}_url", url), (f"{kind}_base64", b64))
    given = [name for name, value in fields if value]
    if len(given) != 1:
        raise InputError(
            400,
            f"need_one_{kind}",
            f"send exactly one {kind}: " + (f"got {', '.join(given)}" if given else "none was given"),
            accepted=["file (multipart)", f"{kind}_url", f"{kind}_base64"],
        )
    limit = settings.max_upload_bytes
    if file is not None:
        return file.filename or kind, await read_upload(file, limit)
    if url:
        return url.rsplit("/", 1)[-1].split("?")[0] or kind, await fetch_url(url, settings, limit)
    return kind, decode_base64(b64 or "", limit, f"{kind}_base64")


async def image_bytes(
    settings: Settings,
    file: UploadFile | None = None,
    image_url: str | None = None,
    image_base64: str | None = None,
) -> bytes:
    """Exactly one image source -> bytes."""
    return (await source_bytes(settings, "image", file, image_url, image_base64))[1]


@dataclass
class PageResult:
    raw: str
    spec: PromptSpec
    image: Image.Image
    result: OCRResult
    mode: str
    plan: dict
    regions: list[ocr_utils.Region] = field(default_factory=list)
    markdown: str = ""
    text: str = ""
    repetition_collapsed: bool = False
    image_info: dict = field(default_factory=dict)

    @property
    def size(self) -> list[int]:
        return [self.image.width, self.image.height]

    def seed_fields(self, model_name: str) -> dict:
        """The response fields of seed 000 (the Truss/Baseten contract)."""
        refs, image_refs, other_refs = ocr_utils.split_references(self.raw)
        return {
            "extracted_text": self.text,
            "raw_output": self.raw,
            "references": refs,
            "image_references": image_refs,
            "other_references": other_refs,
            "image_size": self.size,
            "prompt_used": self.spec.prompt,
            "model_name": model_name,
            "has_bounding_boxes": bool(self.regions),
        }

    @property
    def warnings(self) -> list[str]:
        return list(self.result.warnings)

    def usage(self) -> dict:
        r = self.result
        return {
            "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens,
            "finish_reason": r.finish_reason,
            "timings": r.timings,
        }


def build_request(
    settings: Settings,
    image: Image.Image,
    prompt: str | None,
    *,
    engine: OCREngine,
    mode: str | None = None,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    target: str | None = None,
    tiling: bool = False,
    ignore_eos: bool = False,
    ngram_size: int | None = None,
    ngram_window: int | None = None,
    ngram_whitelist: list[int] | None = None,
    source: tuple[str, bytes] | None = None,
) -> OCRRequest:
    """One engine request; the repetition guard's settings can be overridden per request (vllm_xargs).
    `source`: the page's original file when it decodes to exactly `image` (image_process.load_page)."""
    spec = resolve_prompt(prompt, target)
    m = get_mode(mode, engine.default_mode(), engine.modes)  # the modes and token layout of this engine's model
    plan = plan_tiles(image.width, image.height, m, settings.min_crops, settings.max_crops, engine.token_strategy)
    return OCRRequest(
        image=image,
        spec=spec,
        mode=m,
        plan=plan,
        max_tokens=min(max_tokens or settings.max_tokens, settings.max_tokens),
        temperature=temperature,
        ngram_size=settings.ngram_size if ngram_size is None else ngram_size,
        ngram_window=ngram_window or settings.ngram_window,
        ngram_whitelist=tuple(settings.ngram_whitelist_token_ids if ngram_whitelist is None else ngram_whitelist),
        tiling=tiling,
        ignore_eos=ignore_eos,
        source=source,
    )


async def decode_page(
    engine: OCREngine, settings: Settings, data: bytes
) -> tuple[Image.Image, dict, tuple[str, bytes] | None]:
    """load_page off the event loop; a page the engine will send on as its own file is left undecoded here."""
    return await asyncio.to_thread(load_page, data, settings.max_image_pixels, lazy=engine.lazy_pages)


async def cancel_on_disconnect(request: Request, work):
    """Await `work`, cancelling it (and so the engine request) if the client goes away first. A request whose
    client left ends as a 499 (logged and counted as such), not as a CancelledError traceback per client."""
    task = asyncio.ensure_future(work)
    left = False

    async def watch() -> None:
        nonlocal left
        while not task.done():
            if await request.is_disconnected():
                left = True
                task.cancel()
                return
            await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not left or (current is not None and current.cancelling()):  # shutdown, not the client: propagate
            raise
        message = "the client closed the connection; its work was cancelled"
        return JSONResponse({"error": {"code": "client_closed_request", "message": message}}, status_code=499)
    finally:
        watcher.cancel()


def validate(engine: OCREngine, settings: Settings, prompt: str | None, mode: str | None, target: str | None) -> None:
    """Cheap checks before any decoding: the prompt, the mode, and whether this engine can answer."""
    spec = resolve_prompt(prompt, target)
    get_mode(mode, engine.default_mode(), engine.modes)
    if spec.task not in engine.tasks:
        raise engine.unsupported(spec.task)


def postprocess(req: OCRRequest, res: OCRResult, image_info: dict, page: int | None = None) -> PageResult:
    raw = res.text
    w, h = req.image.size
    grounded = req.spec.task in (Task.DOCUMENT_GROUNDED, Task.OCR_GROUNDED, Task.LOCATE) or "<|det|>" in raw
    regions = ocr_utils.parse_grounding(raw, w, h) if grounded else []
    _, collapsed = ocr_utils.collapse_repeats(raw)
    return PageResult(
        raw=raw,
        spec=req.spec,
        image=req.image,
        result=res,
        mode=req.mode.name,
        plan=req.plan.as_dict(),
        regions=regions,
        markdown=ocr_utils.to_markdown(raw, page=page),
        text=ocr_utils.plain_text(raw),
        repetition_collapsed=collapsed,
        image_info=image_info,
    )


async def ocr_page(
    engine: OCREngine,
    settings: Settings,
    image: Image.Image,
    prompt: str | None,
    *,
    image_info: dict | None = None,
    page: int | None = None,
    **options,
) -> PageResult:
    req = build_request(settings, image, prompt, engine=engine, **options)
    t0 = time.perf_counter()
    intake.handed_off()
    res = await engine.generate(req)  # REQUEST_TIMEOUT_S bounds its running time
    res.timings.setdefault("engine_wall", round(time.perf_counter() - t0, 4))
    return await asyncio.to_thread(postprocess, req, res, image_info or {}, page)


async def ocr_image_bytes(
    engine: OCREngine, settings: Settings, data: bytes, prompt: str | None, **options
) -> PageResult:
    """Decode (off the event loop) and OCR one image."""
    validate(engine, settings, prompt, options.get("mode"), options.get("target"))
    if engine.admitted >= engine.capacity() + settings.max_queue:  # saturated: say so, never queue unboundedly
        raise InputError(
            503, "busy", f"{engine.admitted} requests are in progress or waiting (MAX_QUEUE); try again shortly",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    engine.admitted += 1
    try:
        t0 = time.perf_counter()
        image, info, source = await decode_page(engine, settings, data)
        decode_s = time.perf_counter() - t0
        page = await ocr_page(engine, settings, image, prompt, image_info=info, source=source, **options)
    finally:
        engine.admitted -= 1
    page.result.timings["decode"] = round(decode_s, 4)
    return page
