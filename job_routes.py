"""Jobs: hand over any amount of work, watch its progress, collect the results. Mounted under /jobs.

Jobs live in SQLite + files under DATA_DIR, so a killed and restarted server resumes them (jobs.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

import pipeline
from batch_routes import read_files
from config import Settings
from documents import DocOptions, save_page_image, unique_stems
from errors import InputError
from jobs import FINAL, JobManager, callbacks, events
from pipeline import jobs_of
from process.image_process import load_image, sniff_kind
from storage import job_io

PREFIX = "/jobs"
router = APIRouter(prefix=PREFIX, tags=["jobs"])


def check(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)


def job_or_404(jobs: JobManager, job_id: str) -> dict:
    job = jobs.store.get(job_id)
    if job is None:
        raise InputError(404, "job_not_found", f"no job {job_id} (finished jobs expire after RESULT_TTL_S)")
    return job


@router.post("", status_code=202)
async def create_job(
    request: Request,
    files: Annotated[list[UploadFile] | None, File(description="images and/or PDFs (or input_uri)")] = None,
    prompt: Annotated[str | None, Form()] = None,
    mode: Annotated[str | None, Form()] = None,
    dpi: Annotated[int, Form(ge=72, le=300)] = 144,
    pages: Annotated[str | None, Form(description="page ranges for PDFs, like 1-3,7")] = None,
    draw_layouts: Annotated[bool, Form()] = False,
    extract_images: Annotated[bool, Form()] = True,
    password: Annotated[str | None, Form()] = None,
    max_tokens: Annotated[int | None, Form(ge=1, le=32768)] = None,
    input_uri: Annotated[str | None, Form(description="s3://bucket/prefix/: every image and PDF under it")] = None,
    output_uri: Annotated[str | None, Form(description="s3://bucket/prefix/: results are written there")] = None,
    keep_page_images: Annotated[bool, Form(description="keep each page's image (GET .../pages/{n}/image)")] = False,
    callback_url: Annotated[str | None, Form(description="POSTed the job's final status when it ends")] = None,
):
    """Queue files (or every document under an S3 prefix) for OCR; answers at once with the job id."""
    jobs = jobs_of(request)
    settings = pipeline.settings_of(request)
    pipeline.validate(pipeline.engine_of(request), settings, prompt, mode, None)
    remote, s3_extra = await job_io.plan(settings, input_uri, output_uri, bool(files))  # S3 (storage/job_io.py)
    cb_extra = await callbacks.submission_options(settings, callback_url, str(request.base_url))
    items = [] if remote else await read_files(settings, files or [])
    opts = DocOptions(prompt, mode, dpi, pages, password, draw_layouts, extract_images, max_tokens, keep_page_images)
    kind = "pdf" if len(items) == 1 and sniff_kind(items[0][1]) == "pdf" else "batch"
    job = await jobs.submit(kind, items, opts, remote, {**(s3_extra or {}), **(cb_extra or {})})
    return JSONResponse(job, status_code=202, headers={"Location": job["status_url"]})


@router.get("")
async def list_jobs(request: Request) -> dict:
    jobs = jobs_of(request)
    return {"jobs": [jobs.public(j) for j in jobs.store.recent()]}


@router.get("/status")
async def status(request: Request) -> dict:
    jobs = jobs_of(request)
    return {
        "router": "jobs",
        "available": True,
        "active_jobs": jobs.store.count_active(),
        "workers": jobs.settings.job_workers,
        "backend": jobs.settings.job_backend,
    }


@router.get("/{job_id}")
async def get_job(request: Request, job_id: str) -> dict:
    jobs = jobs_of(request)
    return jobs.public(job_or_404(jobs, job_id))


def _require_done(job: dict) -> None:
    if job["state"] != "done":
        raise InputError(409, "job_not_done", f"job is {job['state']}; results exist once it is done")


@router.get("/{job_id}/result")
async def job_result(request: Request, job_id: str) -> dict:
    """Per-file results (the same entries /batch/ocr returns)."""
    jobs = jobs_of(request)
    _require_done(job_or_404(jobs, job_id))
    return json.loads(jobs.result_path(job_id).read_text())


@router.get("/{job_id}/download")
async def job_download(request: Request, job_id: str) -> FileResponse:
    """The ZIP bundle: per file .md, _det.mmd, layouts PDF, crops; results.json."""
    jobs = jobs_of(request)
    _require_done(job_or_404(jobs, job_id))
    return FileResponse(jobs.zip_path(job_id), media_type="application/zip", filename=f"ocr_job_{job_id}.zip")


@router.delete("/{job_id}")
async def delete_job(request: Request, job_id: str) -> dict:
    """Cancel an unfinished job; delete a finished one and its files."""
    return jobs_of(request).cancel_or_delete(job_id)


@router.get("/{job_id}/events")
async def job_events(
    request: Request,
    job_id: str,
    last_event_id: Annotated[str | None, Header(description="resume after this event id")] = None,
    after: Annotated[int | None, Query(ge=0, description="resume after this event id (without the header)")] = None,
    api_key: Annotated[str | None, Query(description="the API key, for EventSource (it cannot send headers)")] = None,
) -> StreamingResponse:
    """Server-sent events: state changes, one `page` event per finished page (file, page, chars, error,
    pages_done, pages_total), one `file` event per file, then `done`, `failed` or `cancelled` and the end of
    the stream. Every event has an `id:`; reconnecting with `Last-Event-ID` resumes after it."""
    jobs = jobs_of(request)
    job_or_404(jobs, job_id)
    start = events.parse_last_id(last_event_id, after)
    body = events.stream(
        jobs.store, jobs.notifier, job_id, start, request.is_disconnected, jobs.settings.events_keepalive_s
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


def _file_dir(jobs: JobManager, job: dict, file: int) -> Path:
    files = job["files"]
    if not 0 <= file < len(files):
        raise InputError(404, "file_not_found", f"job {job['id']} has files 0-{len(files) - 1}, not {file}")
    return jobs.dir(job["id"]) / "out" / unique_stems([f["name"] for f in files])[file]


def _page_path(jobs: JobManager, job: dict, file: int, page: int) -> Path:
    path = _file_dir(jobs, job, file) / "pages" / f"{page:04d}.json"
    if not path.exists():
        state = "is not done yet" if job["state"] not in FINAL else "was not read (not selected, or the file failed)"
        raise InputError(404, "page_not_found", f"page {page} of file {file} {state}")
    return path


@router.get("/{job_id}/files/{file}/pages/{page}")
async def job_page(request: Request, job_id: str, file: int, page: int) -> Response:
    """One finished page's record (text, markdown, regions with box_norm 0-999, image_size), as soon as it is done."""
    jobs = jobs_of(request)
    path = _page_path(jobs, job_or_404(jobs, job_id), file, page)
    return Response(path.read_bytes(), media_type="application/json")


@router.get("/{job_id}/files/{file}/pages/{page}/image")
async def job_page_image(request: Request, job_id: str, file: int, page: int) -> FileResponse:
    """The page image the boxes refer to (JPEG): kept by the job (keep_page_images) or rendered again from its input."""
    jobs = jobs_of(request)
    job = job_or_404(jobs, job_id)
    record = json.loads(_page_path(jobs, job, file, page).read_text())
    folder = _file_dir(jobs, job, file)
    path = folder / "page_images" / f"{page:04d}.jpg"
    if not path.exists():
        stored = job["files"][file].get("stored")
        if not stored:  # an S3 input: not kept here
            raise InputError(404, "page_image_not_kept", f"page {page} has no image: submit with keep_page_images")
        source = jobs.dir(job_id) / "inputs" / stored
        settings = jobs.settings
        with open(source, "rb") as f:
            head = f.read(4096)
        if sniff_kind(head) == "pdf" or source.name.lower().endswith(".pdf"):
            image, _ = await jobs.renderer.render(
                source, page - 1, record.get("dpi") or 144, job["options"].get("password"), settings.max_image_pixels
            )
        else:
            image, _ = await asyncio.to_thread(load_image, source.read_bytes(), settings.max_image_pixels)
        await asyncio.to_thread(save_page_image, image, folder, page)
    return FileResponse(path, media_type="image/jpeg")


_CROP_RE = re.compile(r"^\d{1,6}(_\d{1,6})?\.jpg$")


@router.get("/{job_id}/files/{file}/images/{name}")
async def job_crop(request: Request, job_id: str, file: int, name: str) -> FileResponse:
    """A figure crop, as the Markdown links it (images/{page}_{k}.jpg)."""
    jobs = jobs_of(request)
    path = _file_dir(jobs, job_or_404(jobs, job_id), file) / "images" / name
    if not _CROP_RE.match(name) or not path.exists():
        raise InputError(404, "image_not_found", f"no image {name!r} in file {file} of job {job_id}")
    return FileResponse(path, media_type="image/jpeg")


def _finished_file(request: Request, job_id: str, file: int, suffix: str, code: str, missing: str) -> Path:
    """A done job's `{stem}{suffix}` of one file, or 404 `code` saying why it is not there."""
    jobs = jobs_of(request)
    job = job_or_404(jobs, job_id)
    _require_done(job)
    folder = _file_dir(jobs, job, file)
    path = folder / f"{folder.name}{suffix}"
    if not path.exists():
        raise InputError(404, code, f"file {file} of job {job_id} has no {missing}")
    return path


@router.get("/{job_id}/files/{file}/markdown")
async def job_markdown(request: Request, job_id: str, file: int) -> FileResponse:
    """One file's combined Markdown, once the job is done."""
    path = _finished_file(request, job_id, file, ".md", "file_failed", "Markdown (it failed)")
    return FileResponse(path, media_type="text/markdown; charset=utf-8", filename=path.name)


@router.get("/{job_id}/files/{file}/layouts.pdf")
async def job_layouts(request: Request, job_id: str, file: int) -> FileResponse:
    """One file's layouts PDF (pages with their labelled boxes), when the job asked for draw_layouts."""
    path = _finished_file(request, job_id, file, "_layouts.pdf", "no_layouts", "layouts PDF (ask for draw_layouts)")
    return FileResponse(path, media_type="application/pdf", filename=path.name)
