"""Batch OCR: many images and PDFs in one request; per-file JSON or a ZIP bundle. Mounted under /batch.

One bad file never fails the batch: its entry carries the error. `?async=true` queues a job.
"""

from __future__ import annotations

import shutil
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask

import pipeline
from config import Settings
from deepseek_ocr import PROMPTS
from documents import DocOptions, process_many, write_zip
from errors import InputError
from inputs import read_upload
from jobs import callbacks
from pdf_routes import workdir

PREFIX = "/batch"
router = APIRouter(prefix=PREFIX, tags=["batch OCR"])


def check(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)


async def read_files(settings: Settings, files: list[UploadFile]) -> list[tuple[str, bytes]]:
    if not files:
        raise InputError(400, "no_files", "send one or more files in the `files` field")
    if len(files) > settings.max_batch_files:
        raise InputError(
            413, "too_many_files", f"{len(files)} files; the limit is {settings.max_batch_files} (MAX_BATCH_FILES)"
        )
    out = []
    total = 0
    for f in files:
        data = await read_upload(f, settings.max_upload_bytes)
        total += len(data)
        if total > settings.max_upload_bytes:
            raise InputError(413, "batch_too_large", f"the files add up to more than {settings.max_upload_bytes} bytes")
        out.append((f.filename or "file", data))
    return out


async def run_batch(request: Request, items, opts: DocOptions):
    settings = pipeline.settings_of(request)
    root = workdir(settings)
    try:
        entries = await process_many(
            pipeline.engine_of(request), settings, request.app.state.renderer, items, root, opts
        )
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return entries, root


def summary(entries: list[dict]) -> dict:
    ok = [e for e in entries if e.get("success")]
    return {"total": len(entries), "succeeded": len(ok), "failed": len(entries) - len(ok)}


Files = Annotated[list[UploadFile], File(description="images and/or PDFs")]
Prompt = Annotated[str | None, Form(description="catalogue name (" + ", ".join(PROMPTS) + ") or text")]
Async = Annotated[bool, Query(alias="async", description="queue as a job; answer 202 with its id")]


@router.post("/ocr")
async def batch_ocr(
    request: Request,
    files: Files,
    prompt: Prompt = None,
    mode: Annotated[str | None, Form()] = None,
    dpi: Annotated[int, Form(ge=72, le=300)] = 144,
    max_tokens: Annotated[int | None, Form(ge=1, le=32768)] = None,
    run_async: Async = False,
    callback_url: Annotated[str | None, Form(description="with async: POSTed the job's status when it ends")] = None,
):
    """Per-file JSON: text, Markdown, per-page results; failed files carry their error."""
    settings = pipeline.settings_of(request)
    items = await read_files(settings, files)
    opts = DocOptions(prompt, mode, dpi, extract_images=False, max_tokens=max_tokens)
    if callback_url and not run_async:
        raise InputError(400, "callback_needs_async", "callback_url is for jobs: add ?async=true")
    if run_async:
        extra = await callbacks.submission_options(settings, callback_url, str(request.base_url))
        job = await pipeline.jobs_of(request).submit("batch", items, opts, extra=extra)
        return JSONResponse(job, status_code=202, headers={"Location": job["status_url"]})
    entries, root = await run_batch(request, items, opts)
    shutil.rmtree(root, ignore_errors=True)
    return {"success": True, **summary(entries), "results": entries}


@router.post("/ocr/download")
async def batch_ocr_download(
    request: Request,
    files: Files,
    prompt: Prompt = None,
    mode: Annotated[str | None, Form()] = None,
    dpi: Annotated[int, Form(ge=72, le=300)] = 144,
    draw_layouts: Annotated[bool, Form()] = True,
    extract_images: Annotated[bool, Form()] = True,
):
    """A ZIP: per file its .md, raw _det.mmd, layouts PDF, figure crops; results.json as the manifest."""
    settings = pipeline.settings_of(request)
    items = await read_files(settings, files)
    opts = DocOptions(prompt, mode, dpi, draw_layouts=draw_layouts, extract_images=extract_images)
    entries, root = await run_batch(request, items, opts)
    zip_path = write_zip(root, entries, root / "results.zip")
    return FileResponse(
        zip_path,
        media_type="application/zip",
        filename="ocr_results.zip",
        background=BackgroundTask(shutil.rmtree, root, ignore_errors=True),
    )


@router.post("/ocr/simple")
async def batch_ocr_simple(request: Request, files: Files, prompt: Prompt = "free"):
    """Text per file, nothing else."""
    settings = pipeline.settings_of(request)
    items = await read_files(settings, files)
    entries, root = await run_batch(request, items, DocOptions(prompt, extract_images=False))
    shutil.rmtree(root, ignore_errors=True)
    results = [
        {"filename": e["filename"], "success": e["success"], "text": e.get("text"), "error": e.get("error")}
        for e in entries
    ]
    return {"success": True, **summary(entries), "results": results}


@router.get("/status")
async def status(request: Request) -> dict:
    return {"router": "batch", "available": True, "engine": pipeline.engine_of(request).info()}


@router.get("/info")
async def info(request: Request) -> dict:
    s = pipeline.settings_of(request)
    return {
        "endpoints": {
            "POST /batch/ocr": "files[] (images and PDFs); prompt, mode, dpi, max_tokens; ?async=true queues a job",
            "POST /batch/ocr/download": "files[]; a ZIP with {stem}/{stem}.md, {stem}_det.mmd, {stem}_layouts.pdf, "
            "images/, and results.json",
            "POST /batch/ocr/simple": "files[]; text per file",
        },
        "limits": {"max_batch_files": s.max_batch_files, "max_upload_bytes": s.max_upload_bytes},
    }
