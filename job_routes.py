"""Jobs: hand over any amount of work, watch its progress, collect the results. Mounted under /jobs.

Jobs live in SQLite + files under DATA_DIR, so a killed and restarted server resumes them (jobs.py).
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse

import pipeline
from batch_routes import read_files
from config import Settings
from documents import DocOptions
from errors import InputError
from jobs import JobManager
from pipeline import jobs_of
from process.image_process import sniff_kind

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
    files: Annotated[list[UploadFile], File(description="images and/or PDFs")],
    prompt: Annotated[str | None, Form()] = None,
    mode: Annotated[str | None, Form()] = None,
    dpi: Annotated[int, Form(ge=72, le=300)] = 144,
    pages: Annotated[str | None, Form(description="page ranges for PDFs, like 1-3,7")] = None,
    draw_layouts: Annotated[bool, Form()] = False,
    extract_images: Annotated[bool, Form()] = True,
    password: Annotated[str | None, Form()] = None,
    max_tokens: Annotated[int | None, Form(ge=1, le=32768)] = None,
):
    """Queue files for OCR; answers at once with the job id and where to watch it."""
    jobs = jobs_of(request)
    settings = pipeline.settings_of(request)
    pipeline.validate(pipeline.engine_of(request), settings, prompt, mode, None)
    items = await read_files(settings, files)
    opts = DocOptions(prompt, mode, dpi, pages, password, draw_layouts, extract_images, max_tokens)
    kind = "pdf" if len(items) == 1 and sniff_kind(items[0][1]) == "pdf" else "batch"
    job = await jobs.submit(kind, items, opts)
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
