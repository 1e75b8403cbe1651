"""Jobs that survive restarts: a SQLite table plus files under DATA_DIR/jobs/{id}/.

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
import sqlite3
import time
import uuid
from pathlib import Path

from config import Settings
from deepseek_ocr import OCREngine
from documents import DocOptions, Renderer, process_many, safe_name, write_zip
from errors import InputError

log = logging.getLogger("ocr.jobs")
ACTIVE = ("queued", "running")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
    updated REAL NOT NULL, finished REAL, options TEXT NOT NULL, files TEXT NOT NULL,
    error TEXT, attempts INTEGER NOT NULL DEFAULT 0
)"""


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(SCHEMA)

    def insert(self, job_id: str, kind: str, options: dict, files: list[dict]) -> None:
        now = time.time()
        self.db.execute(
            "INSERT INTO jobs (id, kind, state, created, updated, options, files) VALUES (?,?,?,?,?,?,?)",
            (job_id, kind, "queued", now, now, json.dumps(options), json.dumps(files)),
        )

    def get(self, job_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = dict(row)
        job["options"] = json.loads(job["options"])
        job["files"] = json.loads(job["files"])
        return job

    def update(self, job_id: str, **fields) -> None:
        fields["updated"] = time.time()
        for k in ("files", "options"):
            if k in fields:
                fields[k] = json.dumps(fields[k])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def ids(self, states: tuple[str, ...]) -> list[str]:
        marks = ",".join("?" * len(states))
        rows = self.db.execute(f"SELECT id FROM jobs WHERE state IN ({marks}) ORDER BY created", states).fetchall()
        return [r["id"] for r in rows]

    def count_active(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running')").fetchone()[0]

    def expired(self, before: float) -> list[str]:
        rows = self.db.execute("SELECT id FROM jobs WHERE finished IS NOT NULL AND finished < ?", (before,)).fetchall()
        return [r["id"] for r in rows]

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def recent(self, limit: int = 50) -> list[dict]:
        rows = self.db.execute("SELECT id FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [j for r in rows if (j := self.get(r["id"]))]


class JobManager:
    """Accepts jobs, runs them on a few asyncio workers, resumes them after a restart."""

    def __init__(self, settings: Settings, engine: OCREngine, renderer: Renderer):
        self.settings = settings
        self.engine = engine
        self.renderer = renderer
        self.root = settings.data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(settings.data_dir / "jobs.db")
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.running: dict[str, asyncio.Task] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        resumed = self.store.ids(ACTIVE)
        for job_id in resumed:  # after a crash or restart: run them again
            self.store.update(job_id, state="queued")
            self.queue.put_nowait(job_id)
        if resumed:
            log.info("resuming %d unfinished job(s)", len(resumed))
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.settings.job_workers)]
        self._tasks.append(asyncio.create_task(self._sweeper()))

    async def stop(self) -> None:
        for t in self._tasks + list(self.running.values()):
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

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
            "status_url": base,
            "result_url": f"{base}/result",
            "download_url": f"{base}/download",
        }

    async def submit(self, kind: str, items: list[tuple[str, bytes]], opts: DocOptions) -> dict:
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
        options = {**opts.as_dict(), "password": opts.password}
        self.store.insert(job_id, kind, options, files)
        self.queue.put_nowait(job_id)
        return self.public(self.store.get(job_id))

    def cancel_or_delete(self, job_id: str) -> dict:
        job = self.store.get(job_id)
        if job is None:
            raise InputError(404, "job_not_found", f"no job {job_id}")
        if job["state"] in ACTIVE:
            task = self.running.get(job_id)
            if task:
                task.cancel()
            self.store.update(job_id, state="cancelled", finished=time.time())
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
        while True:
            job_id = await self.queue.get()
            job = self.store.get(job_id)
            if job is None or job["state"] != "queued":
                continue
            task = asyncio.create_task(self._run(job))
            self.running[job_id] = task
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():  # the worker itself is stopping
                    raise
            except Exception as e:
                log.exception("job %s failed", job_id)
                self.store.update(job_id, state="failed", error=f"{type(e).__name__}: {e}", finished=time.time())
            finally:
                self.running.pop(job_id, None)

    async def _run(self, job: dict) -> None:
        job_id = job["id"]
        files = job["files"]
        self.store.update(job_id, state="running", attempts=job["attempts"] + 1)
        opts_d = dict(job["options"])
        opts = DocOptions(**{k: v for k, v in opts_d.items() if k in DocOptions.__dataclass_fields__})
        inputs = self.dir(job_id) / "inputs"
        last_write = 0.0

        def progress(i: int, done: int, total: int) -> None:
            nonlocal last_write
            files[i].update(pages_done=done, pages_total=total, state="done" if done >= total else "running")
            now = time.monotonic()
            if now - last_write > 0.5 or done >= total:  # throttle DB writes
                last_write = now
                self.store.update(job_id, files=files)

        items = [(f["name"], inputs / f["stored"]) for f in files]
        entries = await process_many(
            self.engine, self.settings, self.renderer, items, self.dir(job_id) / "out", opts, progress
        )
        for f, e in zip(files, entries, strict=True):
            f["state"] = "done" if e.get("success") else "failed"
            if not e.get("success"):
                f["error"] = e.get("error")
        result = {"job_id": job_id, "kind": job["kind"], "files": entries}
        tmp = self.result_path(job_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(self.result_path(job_id))
        job_options = {k: v for k, v in opts_d.items() if k != "password"}  # kept only while needed for a resume
        self.store.update(job_id, state="done", files=files, finished=time.time(), options=job_options)
        log.info("job %s done: %d file(s)", job_id, len(files))

    async def _sweeper(self) -> None:
        while True:
            cutoff = time.time() - self.settings.result_ttl_s
            for job_id in self.store.expired(cutoff):
                shutil.rmtree(self.dir(job_id), ignore_errors=True)
                self.store.delete(job_id)
                log.info("job %s expired", job_id)
            await asyncio.sleep(min(60.0, max(1.0, self.settings.result_ttl_s / 10)))
