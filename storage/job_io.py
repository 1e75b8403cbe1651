"""A job's S3 side: POST /jobs's input_uri (a prefix: one file entry per key) and output_uri; each S3 input
downloaded when its turn comes; each document's results written under output_uri as soon as it is done;
a manifest and the ZIP at the end.

Everything is kept in the job record the store already has: an S3 file entry carries "source" (s3://bucket/key)
instead of an uploaded "stored" file, and "output" (where its results went) once written, or "output_error";
the options carry input_uri, output_uri and "output" ({uri, state: pending|written|failed, ...}), which
GET /jobs/{id} shows. A resumed job skips documents whose results are already written.

Layout: a key under the input prefix's folder keeps its relative path: input_uri s3://in/scans/, key
scans/2024/a.pdf and output_uri s3://out/res/ give s3://out/res/2024/a.pdf/ (storage/results.py says what is
inside); an uploaded file goes to s3://out/res/{stem}/. The job's manifest.json and results.zip sit at the top.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from config import Settings
from errors import InputError
from ocr_utils import safe_name
from storage import s3
from storage.policy import check_read, check_write
from storage.results import upload_document

log = logging.getLogger("ocr.jobs.s3")


def _folder(uri: s3.S3Uri) -> s3.S3Uri:
    return uri if not uri.key or uri.key.endswith("/") else s3.S3Uri(uri.bucket, uri.key + "/")


async def plan(
    settings: Settings, input_uri: str | None, output_uri: str | None, has_files: bool
) -> tuple[list[dict], dict]:
    """POST /jobs's URIs -> (file entries for the keys under input_uri, options to keep with the job).
    Checks the allow-lists and lists the prefix before the job is accepted, so mistakes answer 4xx at once."""
    remote: list[dict] = []
    extra: dict = {}
    if output_uri:
        out = _folder(s3.parse_uri(output_uri, "output_uri"))
        check_write(out, settings)
        s3.require_sdk()  # results are written at the end: without boto3, say so now rather than after the OCR
        extra.update(output_uri=str(out), output={"uri": str(out), "state": "pending"})
    if input_uri:
        if has_files:
            raise InputError(
                400, "need_one_input", "send files or input_uri, not both", accepted=["files", "input_uri"]
            )
        prefix = s3.parse_uri(input_uri, "input_uri")
        check_read(prefix, settings)
        keys = await asyncio.to_thread(
            lambda: list(s3.list_documents(prefix, settings.s3_max_keys, settings.url_timeout_s))
        )
        if not keys:
            raise InputError(
                404, "no_documents", f"no images or PDFs under {prefix}", accepted=list(s3.DOCUMENT_SUFFIXES)
            )
        remote = [{"name": k["key"], "source": str(s3.S3Uri(prefix.bucket, k["key"])), "size": k["size"]} for k in keys]
        extra["input_uri"] = str(prefix)
    return remote, extra


class JobRecords(Protocol):
    """The part of the job store (jobs/store.py) that JobIO writes: the job's file entries."""

    def update(self, job_id: str, **fields) -> None: ...


class JobIOHost(Protocol):
    """What JobIO uses of the job manager that runs the job (jobs/manager.py): its settings, its store's records,
    the job's folder, its event log, and its results.zip."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> JobRecords: ...

    def dir(self, job_id: str) -> Path: ...

    def emit(self, job_id: str, event: dict) -> int: ...

    def zip_path(self, job_id: str) -> Path: ...


class JobIO:
    """One run of one job: sources for documents.process_many, and the uploads after each document and at the end."""

    def __init__(self, jobs: JobIOHost, job_id: str, files: list[dict], options: dict):
        self.jobs = jobs
        self.settings = jobs.settings
        self.job_id = job_id
        self.files = files
        self.options = options
        self.inputs = jobs.dir(job_id) / "inputs"
        self.output = s3.parse_uri(options["output_uri"]) if options.get("output_uri") else None
        prefix = options.get("input_uri")
        key = s3.parse_uri(prefix).key if prefix else ""
        self.base = key.rpartition("/")[0] + "/" if "/" in key else ""  # keys keep their path below this

    def _local(self, i: int) -> Path:
        return self.inputs / f"{i:06d}_{safe_name(self.files[i]['name'])}"

    def source(self, i: int) -> Path | Callable[[], Awaitable[Path]]:
        """An uploaded file's path, or for an S3 key a coroutine function that downloads it (size-capped)."""
        f = self.files[i]
        if "source" not in f:
            return self.inputs / f["stored"]
        uri = s3.parse_uri(f["source"])
        path = self._local(i)

        async def fetch() -> Path:
            check_read(uri, self.settings)  # the operator may have narrowed S3_BUCKETS since the job was accepted
            if not path.exists():
                limit, timeout = self.settings.max_upload_bytes, self.settings.url_timeout_s
                await asyncio.to_thread(s3.download, uri, path, limit, timeout)
            return path

        return fetch

    def destination(self, i: int, entry: dict) -> s3.S3Uri:
        assert self.output is not None
        f = self.files[i]
        if "source" in f:
            key = s3.parse_uri(f["source"]).key
            return self.output.child(key[len(self.base) :] if key.startswith(self.base) else key)
        return self.output.child(entry["stem"])

    async def document_done(self, i: int, entry: dict) -> None:
        """After each document: drop its downloaded copy; write its results under output_uri (once)."""
        f = self.files[i]
        if "source" in f:
            self._local(i).unlink(missing_ok=True)
        if self.output is None or not entry.get("success") or f.get("output"):
            return
        dest = self.destination(i, entry)
        folder = self.jobs.dir(self.job_id) / "out" / entry["stem"]
        attempts, timeout = self.settings.s3_upload_attempts, self.settings.url_timeout_s
        try:
            await asyncio.to_thread(upload_document, folder, dest, attempts, timeout)
        except InputError as e:
            f["output_error"] = e.message
            log.warning("job %s: results of %s not written: %s", self.job_id, f["name"], e.message)
        else:
            f["output"] = str(dest) + "/"
            f.pop("output_error", None)
            self.jobs.store.update(self.job_id, files=self.files)  # a resume does not write them again
        event = {"type": "output", "file": i, "name": f["name"], "uri": str(dest) + "/", "error": f.get("output_error")}
        self.jobs.emit(self.job_id, event)

    async def finish(self, result: dict) -> dict | None:
        """At the end: one more try for documents whose results were not written, then manifest.json and
        results.zip. Returns the output status for the job's options (None without output_uri)."""
        if self.output is None:
            return None
        entries = result["files"]
        for i, entry in enumerate(entries):
            if entry.get("success") and not self.files[i].get("output"):
                await self.document_done(i, entry)
        manifest = {
            "job_id": self.job_id,
            "input_uri": self.options.get("input_uri"),
            "output_uri": str(self.output),
            "documents": [
                {
                    "name": f["name"],
                    "source": f.get("source"),
                    "success": bool(e.get("success")),
                    "output": f.get("output"),
                    "files": e.get("files", []),
                    "pages": e.get("pages_processed", 0),
                    "error": e.get("error") or ({"message": f["output_error"]} if f.get("output_error") else None),
                }
                for f, e in zip(self.files, entries, strict=True)
            ],
        }
        pairs = list(zip(self.files, entries, strict=True))
        unwritten = [f for f, e in pairs if e.get("success") and not f.get("output")]
        ok = sum(bool(e.get("success")) for e in entries)
        written = ok - len(unwritten)
        manifest["summary"] = {"total": len(entries), "succeeded": ok, "failed": len(entries) - ok, "written": written}
        errors = []
        if unwritten:
            first = unwritten[0]
            errors.append(
                f"results of {len(unwritten)} document(s) were not written (first: {first['name']}: "
                f"{first.get('output_error')})"
            )
        attempts, timeout = self.settings.s3_upload_attempts, self.settings.url_timeout_s
        uploads: list[tuple[str, Callable[[], bytes | Path], str]] = [
            ("results.zip", lambda: self.jobs.zip_path(self.job_id), "application/zip"),
            ("manifest.json", lambda: json.dumps(manifest, indent=1).encode(), "application/json"),
        ]
        for name, content, ctype in uploads:
            uri = self.output.child(name)
            try:
                await asyncio.to_thread(
                    s3.retrying, lambda uri=uri, c=content, t=ctype: s3.put(uri, c(), t, timeout), attempts
                )
            except InputError as e:
                errors.append(f"{name} was not written: {e.message}")
        status = {
            "uri": str(self.output),
            "state": "failed" if errors else "written",
            "manifest": str(self.output.child("manifest.json")),
            "documents_written": written,
            "error": "; ".join(errors) or None,
        }
        self.jobs.emit(self.job_id, {"type": "output", **status})
        return status
