"""Runs jobs: accepts them (files under DATA_DIR/jobs/{id}/), runs them on a few asyncio workers, resumes
them after a restart, logs each job's events (state changes, every finished page) and expires old ones.

    inputs/{n}_{name}   the uploaded files, written before the job is accepted
    out/{stem}/         each document's output folder (documents.py); finished pages are kept per page
A killed server finds its queued and running jobs in the table at start and runs them again; pages
already written are skipped. The queue is bounded (429 + Retry-After when full); finished jobs expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from pathlib import Path

from config import Settings
from deepseek_ocr import OCREngine
from documents import DocOptions, Renderer, process_many, write_zip
from errors import InputError
from jobs.callbacks import Callbacks
from jobs.events import Notifier
from jobs.sqlite_store import SQLiteJobStore
from jobs.store import ACTIVE, JobStore
from ocr_utils import safe_name
from storage.job_io import JobIO

log = logging.getLogger("ocr.jobs")


class JobManager:
    """Accepts jobs, runs them on a few asyncio workers, resumes them after a restart."""

    def __init__(self, settings: Settings, engine: OCREngine, renderer: Renderer):
        self.settings = settings
        self.engine = engine
        self.renderer = renderer
        self.root = settings.data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.store: JobStore = self.open_store()
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.running: dict[str, asyncio.Task] = {}
        self._tasks: list[asyncio.Task] = []
        self.notifier = Notifier()  # wakes GET /jobs/{id}/events streams
        self.callbacks = Callbacks(self)

    def open_store(self) -> JobStore:
        return SQLiteJobStore(self.settings.data_dir / "jobs.db")

    async def start(self) -> None:
        resumed = self.store.ids(ACTIVE)
        for job_id in resumed:  # after a crash or restart: run them again
            self.store.update(job_id, state="queued")
            self.queue.put_nowait(job_id)
        if resumed:
            log.info("resuming %d unfinished job(s)", len(resumed))
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.settings.job_workers)]
        self._tasks.append(asyncio.create_task(self._sweeper()))
        self.callbacks.resume()  # callbacks of finished jobs that an earlier process did not deliver

    async def stop(self) -> None:
        await self.callbacks.stop()
        for t in self._tasks + list(self.running.values()):
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        if unfinished := self.store.ids(ACTIVE):  # left as they are: start() runs them again
            log.info("stopped with %d unfinished job(s); they resume at the next start", len(unfinished))

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def emit(self, job_id: str, event: dict) -> int:
        """Log one event of a job (GET /jobs/{id}/events streams them); returns its id."""
        event_id = self.store.append_event(job_id, {**event, "job_id": job_id, "time": round(time.time(), 3)})
        self.notifier.notify(job_id)
        return event_id

    def finish(self, job_id: str, state: str, **fields) -> None:
        """Record a job's final state and log it as its last event."""
        self.store.update(job_id, state=state, finished=time.time(), **fields)
        self.emit(job_id, {"type": state, "state": state, "error": fields.get("error")})
        self.callbacks.job_finished(job_id)

    def public(self, job: dict) -> dict:
        """What GET /jobs/{id} shows."""
        files = job["files"]
        done = sum(f.get("pages_done", 0) for f in files)
        total = sum(f.get("pages_total", 0) for f in files)
        base = f"/jobs/{job['id']}"
        return {
            "job_id": job["id"],
            "kind": job["kind"],
            "state": job["state"],
            "created": job["created"],
            "finished": job["finished"],
            "progress": {
                "pages_done": done,
                "pages_total": total,
                "files_done": sum(f["state"] in ("done", "failed") for f in files),
                "files_total": len(files),
            },
            "files": [{k: v for k, v in f.items() if k != "stored"} for f in files],
            "error": job["error"],
            "output": job["options"].get("output"),  # where output_uri results go, and how that went
            "status_url": base,
            "result_url": f"{base}/result",
            "download_url": f"{base}/download",
        }

    async def submit(
        self,
        kind: str,
        items: list[tuple[str, bytes]],
        opts: DocOptions,
        remote: list[dict] | None = None,
        extra: dict | None = None,
    ) -> dict:
        """Accept a job: uploaded `items` are written now; `remote` file entries (S3 keys, storage/job_io.py)
        are fetched when their turn comes; `extra` options are kept with the job (callback_url, output_uri...)."""
        if self.store.count_active() >= self.settings.job_queue_max:
            raise InputError(
                429, "queue_full", f"{self.settings.job_queue_max} jobs are waiting (JOB_QUEUE_MAX); try again later",
                headers={"Retry-After": "30"},
            )  # fmt: skip
        job_id = uuid.uuid4().hex
        inputs = self.dir(job_id) / "inputs"
        inputs.mkdir(parents=True)
        files = []
        for i, (name, data) in enumerate(items):
            stored = f"{i:04d}_{safe_name(name)}"
            (inputs / stored).write_bytes(data)
            files.append({"name": name, "stored": stored, "state": "queued", "pages_done": 0, "pages_total": 0})
        files += [{**r, "state": "queued", "pages_done": 0, "pages_total": 0} for r in remote or ()]
        options = {**opts.as_dict(), **(extra or {}), "password": opts.password}
        self.store.insert(job_id, kind, options, files)
        self.emit(job_id, {"type": "state", "state": "queued", "files": [f["name"] for f in files]})
        await self.enqueue(job_id)
        return self.public(self.store.get(job_id))

    async def enqueue(self, job_id: str) -> None:
        """Hand an accepted job to the workers (the Redis backend overrides this: jobs/distributed.py)."""
        self.queue.put_nowait(job_id)

    def cancel_or_delete(self, job_id: str) -> dict:
        job = self.store.get(job_id)
        if job is None:
            raise InputError(404, "job_not_found", f"no job {job_id}")
        if job["state"] in ACTIVE:
            task = self.running.get(job_id)
            if task:
                task.cancel()
            self.finish(job_id, "cancelled")
            return {"job_id": job_id, "state": "cancelled"}
        shutil.rmtree(self.dir(job_id), ignore_errors=True)
        self.store.delete(job_id)
        return {"job_id": job_id, "state": "deleted"}

    def result_path(self, job_id: str) -> Path:
        return self.dir(job_id) / "results.json"

    def zip_path(self, job_id: str) -> Path:
        job = self.store.get(job_id)
        path = self.dir(job_id) / "results.zip"
        if job and not path.exists():
            entries = json.loads(self.result_path(job_id).read_text())["files"]
            write_zip(self.dir(job_id) / "out", entries, path)
        return path

    async def _worker(self, n: int) -> None:
        me = asyncio.current_task()
        while True:
            if me.cancelling():  # stop() came while a job swallowed the cancellation it passed on: stop now
                raise asyncio.CancelledError
            job_id = await self.queue.get()
            job = self.store.get(job_id)
            if job is None or job["state"] != "queued":
                continue
            task = asyncio.create_task(self._run(job))
            self.running[job_id] = task
            try:
                await task
            except asyncio.CancelledError:
                # Cancelling the worker (stop()) cancels the job it awaits, so the job's task ends cancelled
                # either way: only the worker's own count tells stop() from DELETE /jobs/{id}. On stop() the
                # job stays queued/running in the store and start() runs it again.
                if me.cancelling() or not task.cancelled():
                    raise
                # only the job was cancelled (DELETE /jobs/{id} recorded it): on to the next one
            except Exception as e:
                log.exception("job %s failed", job_id)
                self.finish(job_id, "failed", error=f"{type(e).__name__}: {e}")
            finally:
                self.running.pop(job_id, None)

    async def _run(self, job: dict) -> None:
        while not self.engine.ready and self.engine.error is None:  # after a restart the engine is still loading
            await asyncio.sleep(0.2)
        job_id = job["id"]
        files = job["files"]
        self.store.update(job_id, state="running", attempts=job["attempts"] + 1)
        self.emit(job_id, {"type": "state", "state": "running", "attempt": job["attempts"] + 1})
        opts_d = dict(job["options"])
        opts = DocOptions(**{k: v for k, v in opts_d.items() if k in DocOptions.__dataclass_fields__})
        last_write = 0.0

        def progress(i: int, done: int, total: int) -> None:
            nonlocal last_write
            files[i].update(pages_done=done, pages_total=total, state="done" if done >= total else "running")
            now = time.monotonic()
            if now - last_write > 0.5 or done >= total:  # throttle DB writes
                last_write = now
                self.store.update(job_id, files=files)

        def page_done(i: int, record: dict) -> None:
            error = record.get("error")
            self.emit(job_id, {
                "type": "page", "file": i, "name": files[i]["name"], "page": record["page"],
                "chars": len(record.get("text") or ""), "error": error.get("message") if error else None,
                "pages_done": files[i]["pages_done"], "pages_total": files[i]["pages_total"],
            })  # fmt: skip

        io = JobIO(self, job_id, files, opts_d)  # S3 inputs fetched in turn, results written to output_uri
        items = [(f["name"], io.source(i)) for i, f in enumerate(files)]
        entries = await process_many(
            self.engine, self.settings, self.renderer, items, self.dir(job_id) / "out", opts, progress, page_done,
            io.document_done,
        )  # fmt: skip
        await self.complete(job, files, entries, io)

    async def complete(self, job: dict, files: list[dict], entries: list[dict], io: JobIO | None = None) -> None:
        """A job whose files are all processed: file events, results.json, results to output_uri (S3), the
        final state."""
        job_id = job["id"]
        io = io or JobIO(self, job_id, files, dict(job["options"]))
        for i, (f, e) in enumerate(zip(files, entries, strict=True)):
            f["state"] = "done" if e.get("success") else "failed"
            if not e.get("success"):
                f["error"] = e.get("error")
            self.emit(
                job_id, {"type": "file", "file": i, "name": f["name"], "state": f["state"], "error": f.get("error")}
            )
        result = {"job_id": job_id, "kind": job["kind"], "files": entries}
        tmp = self.result_path(job_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(self.result_path(job_id))
        options = dict(io.options)
        if output := await io.finish(result):
            options["output"] = output
        job_options = {k: v for k, v in options.items() if k != "password"}  # kept only while needed for a resume
        self.finish(job_id, "done", files=files, options=job_options, error=output and output["error"])
        log.info("job %s done: %d file(s)", job_id, len(files))

    async def _sweeper(self) -> None:
        while True:
            cutoff = time.time() - self.settings.result_ttl_s
            for job_id in self.store.expired(cutoff):
                shutil.rmtree(self.dir(job_id), ignore_errors=True)
                self.store.delete(job_id)
                log.info("job %s expired", job_id)
            await asyncio.sleep(min(60.0, max(1.0, self.settings.result_ttl_s / 10)))
