"""The core app: ONE engine for the whole process, the base routes, and the three feature routers.

Each router (ocr_routes, pdf_routes, batch_routes) is imported and checked on its own: one that fails to
import or start is replaced by a stand-in that answers its /status with the reason and 503 elsewhere,
while the others keep serving. Run: `uvicorn serve_ocr:app --host 0.0.0.0 --port 8000`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import traceback
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, Form, Request, Security, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

import intake
import metrics
import pipeline
from config import Settings, get_settings
from deepseek_ocr import PROMPTS
from documents import Renderer
from engines.factory import build_engine
from errors import InputError, error_response, install_handlers
from jobs import make_manager
from middleware import ApiKeys, BodyLimit, RequestContext, configure_logging, load_api_keys
from process.image_process import MODES
from storage import s3

VERSION = "0.1.0"
ROUTERS = {
    "ocr": "ocr_routes",
    "pdf": "pdf_routes",
    "batch": "batch_routes",
    "jobs": "job_routes",
    "v1": "openai_routes",  # OpenAI-compatible API, mounted at /v1
    "ui": "ui_routes",  # the web page, mounted at /ui
}
log = logging.getLogger("ocr.app")


class GenerateBody(BaseModel):
    prompt: str | None = Field(None, description="a catalogue name (" + ", ".join(PROMPTS) + ") or prompt text")
    image_base64: str | None = Field(None, description="the image, base64 (a data: URL is fine)")
    image_url: str | None = Field(None, description="http(s) or s3:// URL of the image")
    mode: str | None = Field(None, description="resolution mode: " + ", ".join(MODES))
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    target: str | None = Field(None, description="text to find, for the 'locate' prompt")
    stream: bool = Field(False, description="send the text as server-sent events while it is generated")
    ignore_eos: bool = Field(False, description="benchmarks only: always generate max_tokens")


class InvocationBody(BaseModel):
    prompt: str | None = None
    image_url: str | None = None
    image_base64: str | None = None
    pdf_url: str | None = None
    pdf_base64: str | None = None


def _unavailable_router(name: str, prefix: str, reason: str) -> APIRouter:
    """Stands in for a router that could not start: says why, answers 503 elsewhere under its prefix."""
    r = APIRouter(prefix=prefix, tags=[name])

    @r.get("/status")
    async def status() -> JSONResponse:
        return JSONResponse({"router": name, "available": False, "error": reason}, status_code=503)

    @r.api_route("/{rest:path}", methods=["GET", "POST", "DELETE"], include_in_schema=False)
    async def down(rest: str) -> JSONResponse:
        return error_response(503, "router_unavailable", f"the {name} router is not available: {reason}")

    return r


def death_policy(settings: Settings, pid: int | None = None) -> Callable[[str], None]:
    """What happens when the engine's process dies: ENGINE_DEATH=exit sends SIGTERM to this process after a
    short grace (in-flight requests get their 503, uvicorn drains and exits with a non-zero status, the
    container's restart policy starts a fresh engine); `stay` keeps answering 503 with the reason."""

    def on_death(reason: str) -> None:
        if settings.engine_death != "exit":
            return
        target = pid or os.getpid()
        log.error("engine died (%s): exiting in %.1f s (ENGINE_DEATH=exit)", reason, settings.engine_death_grace_s)
        try:
            asyncio.get_running_loop().call_later(settings.engine_death_grace_s, os.kill, target, signal.SIGTERM)
        except RuntimeError:  # no loop in this thread
            os.kill(target, signal.SIGTERM)

    return on_death


def mount_routers(app: FastAPI, routers: dict[str, str]) -> None:
    app.state.router_status = {}
    for name, module_name in routers.items():
        prefix = f"/{name}"
        try:
            module = importlib.import_module(module_name)
            check = getattr(module, "check", None)
            if check:
                check(app.state.settings)
            app.include_router(module.router)
            app.state.router_status[name] = {"available": True, "module": module_name, "error": None}
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            log.error("router %s (%s) unavailable: %s\n%s", name, module_name, reason, traceback.format_exc())
            app.state.router_status[name] = {"available": False, "module": module_name, "error": reason}
            app.include_router(_unavailable_router(name, prefix, reason))


def create_app(settings: Settings | None = None, routers: dict[str, str] | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)
    if (settings.s3_buckets or settings.s3_output_buckets) and not s3.sdk_installed():
        log.warning(
            "S3_BUCKETS / S3_OUTPUT_BUCKETS are set, but boto3 is not installed: s3:// answers 501 s3_sdk_missing "
            "until it is (pip install boto3)"
        )
    keys = load_api_keys(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = build_engine(settings)
        engine.on_death = death_policy(settings)
        app.state.engine = engine
        app.state.renderer = Renderer(settings.num_workers)
        app.state.intake = (
            intake.Intake(settings.intake_slots, settings.intake_hold_s) if settings.intake_slots else None
        )
        app.state.engine_task = asyncio.create_task(engine.start())  # /health answers while it loads
        app.state.jobs, app.state.jobs_error = None, None
        try:
            jobs = make_manager(settings, engine, app.state.renderer)
            await jobs.start()
            app.state.jobs = jobs
        except Exception as e:
            app.state.jobs_error = f"{type(e).__name__}: {e}"
            log.exception("job queue could not start")
        yield
        if app.state.jobs:
            await app.state.jobs.stop()
        app.state.engine_task.cancel()
        await engine.stop()
        app.state.renderer.shutdown()

    app = FastAPI(
        title="DeepSeek-OCR service",
        version=VERSION,
        description="Images, scans and PDFs to text and Markdown with DeepSeek-OCR (vLLM) or the embedded CPU engine.",
        lifespan=lifespan,
        # Declares the key in the OpenAPI schema so Swagger UI's Authorize button sends it.
        dependencies=[Security(APIKeyHeader(name="X-API-Key", auto_error=False))] if keys else None,
    )
    app.state.settings = settings
    install_handlers(app)
    # Outermost last: request id + access log, API keys, the body cap (base64 in JSON is 4/3), then the intake
    # (uploads read in arrival order, a few at a time; a refused request never takes a slot).
    app.add_middleware(intake.IntakeGate)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes * 4 // 3 + 64 * 1024)
    app.add_middleware(ApiKeys, keys=keys)
    app.add_middleware(RequestContext)
    app.include_router(base_router())
    mount_routers(app, routers or ROUTERS)
    return app


def base_router() -> APIRouter:
    r = APIRouter(tags=["service"])

    @r.get("/")
    async def root(request: Request) -> dict:
        engine = pipeline.engine_of(request)
        return {
            "service": "DeepSeek-OCR service",
            "version": VERSION,
            "engine": {**engine.info(), "selected_because": getattr(engine, "selection_reason", None)},
            "routers": request.app.state.router_status,
            "intake": gate.info() if (gate := getattr(request.app.state, "intake", None)) else None,
            "docs": "/docs",
        }

    @r.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @r.get("/health")
    async def health() -> dict:
        """Liveness: the process answers. Always 200 while the server runs."""
        return {"status": "ok"}

    @r.get("/ready")
    async def ready(request: Request) -> JSONResponse:
        """Readiness: 200 once the engine can take work, else 503 with the reason."""
        engine = pipeline.engine_of(request)
        body = {"ready": engine.ready, "engine": engine.name, "error": engine.error}
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    @r.get("/ping")
    async def ping(request: Request) -> JSONResponse:
        """SageMaker health check: 200 when ready to serve /invocations."""
        engine = pipeline.engine_of(request)
        body = {"status": "healthy" if engine.ready else "loading", "model": engine.model_name, "backend": engine.name}
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    @r.post("/generate")
    async def generate(request: Request, body: GenerateBody) -> dict:
        """Basic inference on a base64 or URL image; `result` is the model's raw text."""
        settings = pipeline.settings_of(request)
        data = await pipeline.image_bytes(settings, image_url=body.image_url, image_base64=body.image_base64)
        options = {"mode": body.mode, "max_tokens": body.max_tokens, "temperature": body.temperature}
        options.update(target=body.target, ignore_eos=body.ignore_eos)
        if body.stream:
            return await _stream(request, data, body.prompt, options)
        return await pipeline.cancel_on_disconnect(request, _generate(request, data, body.prompt, **options))

    @r.post("/generate_with_file")
    async def generate_with_file(
        request: Request,
        file: Annotated[UploadFile, File(description="the image")],
        prompt: Annotated[str | None, Form()] = None,
        mode: Annotated[str | None, Form()] = None,
        max_tokens: Annotated[int | None, Form(ge=1, le=32768)] = None,
        temperature: Annotated[float, Form(ge=0.0, le=2.0)] = 0.0,
        target: Annotated[str | None, Form()] = None,
    ) -> dict:
        """Basic inference on an uploaded image."""
        data = await pipeline.image_bytes(pipeline.settings_of(request), file=file)
        options = {"mode": mode, "max_tokens": max_tokens, "temperature": temperature, "target": target}
        return await pipeline.cancel_on_disconnect(request, _generate(request, data, prompt, **options))

    @r.post("/invocations")
    async def invocations(request: Request, body: InvocationBody) -> dict:
        """SageMaker contract: image_url | image_base64 -> {"text", ...}; pdf_url | pdf_base64 -> {"text", "pages"}."""
        settings = pipeline.settings_of(request)
        if body.pdf_url or body.pdf_base64:
            if body.image_url or body.image_base64:
                raise InputError(400, "need_one_input", "send an image or a PDF, not both")
            status = request.app.state.router_status.get("pdf", {})
            if not status.get("available"):
                raise InputError(501, "pdf_unavailable", f"PDF input is not available: {status.get('error')}")
            import pdf_routes

            return await pdf_routes.invoke_pdf(request, body.prompt, body.pdf_url, body.pdf_base64)
        data = await pipeline.image_bytes(settings, image_url=body.image_url, image_base64=body.image_base64)
        engine = pipeline.engine_of(request)
        page = await pipeline.ocr_image_bytes(engine, settings, data, body.prompt)
        return {"text": page.text, **page.seed_fields(engine.model_name), "usage": page.usage()}

    return r


async def _stream(request: Request, data: bytes, prompt: str | None, options: dict) -> StreamingResponse:
    """Server-sent events: `data: {"text": delta}` while generating, then `data: [DONE]`."""
    engine = pipeline.engine_of(request)
    settings = pipeline.settings_of(request)
    pipeline.validate(engine, settings, prompt, options.get("mode"), options.get("target"))
    image, _, source = await pipeline.decode_page(engine, settings, data)
    req = pipeline.build_request(settings, image, prompt, engine=engine, source=source, **options)
    intake.handed_off()

    async def events():
        try:
            async for delta in engine.stream(req):  # a client that leaves cancels this generator
                yield f"data: {json.dumps({'text': delta})}\n\n"
        except InputError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _generate(request: Request, data: bytes, prompt: str | None, **options) -> dict:
    engine = pipeline.engine_of(request)
    settings = pipeline.settings_of(request)
    page = await pipeline.ocr_image_bytes(engine, settings, data, prompt, **options)
    return {
        "result": page.raw,
        "text": page.text,
        "markdown": page.markdown,
        "engine": engine.name,
        "model_name": engine.model_name,
        "prompt_used": page.spec.prompt,
        "task": page.spec.task.value,
        "image_size": page.size,
        "mode": page.mode,
        "tiles": page.plan,
        "usage": page.usage(),
    }


app = create_app()
