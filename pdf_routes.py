"""PDF OCR: per-page results, combined Markdown, layouts PDF and figure crops. Mounted under /pdf.

`?async=true` hands the work to the job queue (see job_routes.py) and answers 202 at once.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse

import ocr_utils
import pipeline
from config import Settings
from deepseek_ocr import PROMPTS
from documents import DocOptions, process_document
from errors import InputError
from jobs import callbacks
from ocr_utils import safe_name
from process.image_process import MODES, sniff_kind

PREFIX = "/pdf"
router = APIRouter(prefix=PREFIX, tags=["PDF OCR"])


def check(settings: Settings) -> None:
    import img2pdf  # noqa: F401
    import pymupdf  # noqa: F401


async def pdf_bytes(
    settings: Settings, file: UploadFile | None, pdf_url: str | None, pdf_base64: str | None
) -> tuple[str, bytes]:
    name, data = await pipeline.source_bytes(settings, "pdf", file, pdf_url, pdf_base64)
    return (name if name != "pdf" else "document.pdf"), data


def workdir(settings: Settings) -> Path:
    path = settings.data_dir / "tmp" / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def require_pdf(data: bytes) -> None:
    if sniff_kind(data) != "pdf":
        raise InputError(
            415, "not_a_pdf", "the file is not a PDF: send images to /ocr/image/advanced", accepted=["PDF"]
        )


async def run_pdf(request: Request, name: str, data: bytes, opts: DocOptions) -> tuple[dict, Path]:
    require_pdf(data)
    settings = pipeline.settings_of(request)
    root = workdir(settings)
    stem = safe_name(name).rsplit(".", 1)[0] or "document"
    try:
        entry = await process_document(
            pipeline.engine_of(request), settings, request.app.state.renderer, name, data, root / stem, opts
        )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return entry, root / stem


def usage_total(pages: list[dict]) -> dict:
    return {
        "prompt_tokens": sum(p["usage"]["prompt_tokens"] for p in pages),
        "output_tokens": sum(p["usage"]["output_tokens"] for p in pages),
    }


@router.post("/ocr", status_code=200)
async def pdf_ocr(
    request: Request,
    file: Annotated[UploadFile | None, File(description="the PDF (or pdf_url / pdf_base64)")] = None,
    pdf_url: Annotated[str | None, Form()] = None,
    pdf_base64: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form(description="catalogue name (" + ", ".join(PROMPTS) + ") or text")] = None,
    mode: Annotated[str | None, Form(description="resolution mode: " + ", ".join(MODES))] = None,
    dpi: Annotated[int, Form(ge=72, le=300)] = 144,
    pages: Annotated[str | None, Form(description="page ranges like 1-3,7 (default: all)")] = None,
    draw_layouts: Annotated[bool, Form(description="return the layouts PDF (pages with labelled boxes)")] = False,
    extract_images: Annotated[bool, Form(description="return the figure crops")] = True,
    password: Annotated[str | None, Form(description="for password-protected PDFs")] = None,
    max_tokens: Annotated[int | None, Form(ge=1, le=32768)] = None,
    run_async: Annotated[bool, Query(alias="async", description="queue as a job; answer 202 with its id")] = False,
    callback_url: Annotated[str | None, Form(description="with async: POSTed the job's status when it ends")] = None,
):
    """Full PDF OCR: per-page text, Markdown and regions; combined Markdown; layouts PDF and crops on request."""
    settings = pipeline.settings_of(request)
    name, data = await pdf_bytes(settings, file, pdf_url, pdf_base64)
    opts = DocOptions(prompt, mode, dpi, pages, password, draw_layouts, extract_images, max_tokens)
    if callback_url and not run_async:
        raise InputError(400, "callback_needs_async", "callback_url is for jobs: add ?async=true")
    if run_async:
        require_pdf(data)
        extra = await callbacks.submission_options(settings, callback_url, str(request.base_url))
        job = await pipeline.jobs_of(request).submit("pdf", [(name, data)], opts, extra=extra)
        return JSONResponse(job, status_code=202, headers={"Location": job["status_url"]})
    entry, folder = await run_pdf(request, name, data, opts)
    try:
        body = {
            "success": True,
            "engine": pipeline.engine_of(request).name,
            "filename": name,
            "page_count": entry["page_count"],
            "pages_processed": entry["pages_processed"],
            "markdown": entry["markdown"],
            "text": entry["text"],
            "pages": entry["pages"],
            "usage": usage_total(entry["pages"]),
            "seconds": entry["seconds"],
            "layouts_pdf": None,
            "images": [],
        }
        if draw_layouts and (folder / f"{folder.name}_layouts.pdf").exists():
            body["layouts_pdf"] = ocr_utils.b64((folder / f"{folder.name}_layouts.pdf").read_bytes())
        if extract_images:
            body["images"] = [
                {"name": f, "image_base64": ocr_utils.b64((folder / f).read_bytes())}
                for f in entry["files"]
                if f.startswith("images/")
            ]
        return body
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


@router.post("/ocr/simple")
async def pdf_ocr_simple(
    request: Request,
    file: Annotated[UploadFile | None, File()] = None,
    pdf_url: Annotated[str | None, Form()] = None,
    pdf_base64: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = "free",
    dpi: Annotated[int, Form(ge=72, le=300)] = 144,
    pages: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
):
    """Quick PDF text extraction: the text of every page (Free OCR by default)."""
    settings = pipeline.settings_of(request)
    name, data = await pdf_bytes(settings, file, pdf_url, pdf_base64)
    opts = DocOptions(prompt, None, dpi, pages, password, draw_layouts=False, extract_images=False)
    entry, folder = await run_pdf(request, name, data, opts)
    shutil.rmtree(folder.parent, ignore_errors=True)
    return {
        "success": True,
        "filename": name,
        "pages": entry["pages_processed"],
        "text": entry["text"],
        "page_texts": [p["text"] for p in entry["pages"]],
    }


async def invoke_pdf(request: Request, prompt: str | None, pdf_url: str | None, pdf_base64: str | None) -> dict:
    """SageMaker /invocations with pdf_url / pdf_base64: {"text", "pages"} as seed 002 specifies."""
    settings = pipeline.settings_of(request)
    name, data = await pdf_bytes(settings, None, pdf_url, pdf_base64)
    entry, folder = await run_pdf(request, name, data, DocOptions(prompt, extract_images=False))
    shutil.rmtree(folder.parent, ignore_errors=True)
    return {"text": entry["text"], "pages": entry["pages_processed"], "markdown": entry["markdown"]}


@router.get("/status")
async def status(request: Request) -> dict:
    engine = pipeline.engine_of(request)
    return {"router": "pdf", "available": True, "engine": engine.info()}


@router.get("/info")
async def info() -> dict:
    return {
        "endpoints": {
            "POST /pdf/ocr": "file | pdf_url | pdf_base64; prompt, mode, dpi (72-300), pages (1-3,7), draw_layouts, "
            "extract_images, password, max_tokens; ?async=true queues a job",
            "POST /pdf/ocr/simple": "file | pdf_url | pdf_base64; text of every page",
        },
        "page_separator": "<--- Page Split --->",
        "defaults": {"dpi": 144, "prompt": PROMPTS["document"]},
    }
