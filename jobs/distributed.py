"""JOB_BACKEND=redis: jobs shared by replicas, their pages spread over the workers of every replica.

Any replica accepts a job (inputs go to the shared DATA_DIR, the record to Redis: jobs/redis_store.py) and
answers its status, result and download. The work travels as arq tasks on one Redis queue, and every replica
runs an arq worker inside its own event loop, next to its one engine:
    plan_job(job)             check each file, list its pages (documents.plan_document), enqueue its pages
    ocr_page(job, file, page) one page into out/{stem}/pages/NNNN.json (documents.process_page, atomic write)
    finish_job(job)           enqueued by whichever page completes the job: Markdown, manifests, results.json
Task ids are derived from (job, file, page), so enqueuing twice is a no-op. arq leaves a task in the queue until
it ends and marks it in progress with a key that expires; each replica renews the marks of its running tasks
every JOB_LEASE_S / 3, so a replica killed mid-page leaves them to expire within JOB_LEASE_S and another replica
runs those pages again, while a slow page on a live replica is never taken over. A replica that stops (SIGTERM)
hands its pages back at once. A page counts once (a Redis set) and is stored once (one file per page), however
often it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import redis
from arq import Retry, Worker, create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix
from arq.worker import func

from documents import (
    DocOptions,
    finish_document,
    page_path,
    plan_document,
    process_page,
    save_error_page,
    unique_stems,
)
from errors import InputError
from jobs.manager import JobManager
from jobs.redis_store import RedisJobStore, RedisUnavailable
from jobs.store import ACTIVE

log = logging.getLogger("ocr.jobs")
REPLICA = f"{socket.gethostname()}:{os.getpid()}"  # names the replica in page events


class DistributedJobManager(JobManager):
    store: RedisJobStore

    def open_store(self) -> RedisJobStore:
        return RedisJobStore(self.settings.redis_url, self.settings.redis_prefix)

    @property
    def queue_name(self) -> str:
        return f"{self.settings.redis_prefix}:queue"

    def task_id(self, *parts: object) -> str:
        return ":".join((self.settings.redis_prefix, *map(str, parts)))

    async def start(self) -> None:
        self.store.ping()  # unreachable Redis: the jobs router answers 503 with the reason
        redis_settings = RedisSettings.from_dsn(self.settings.redis_url)
        self.pool: ArqRedis = await create_pool(redis_settings, default_queue_name=self.queue_name)
        self.worker: Worker | None = None
        self._tasks = [
            asyncio.create_task(self._run_worker(redis_settings)),
            asyncio.create_task(self._renew_leases()),
            asyncio.create_task(self._sweeper()),
        ]
        self.callbacks.resume()  # pending callbacks (every replica retries them: delivery is at least once)

    async def stop(self) -> None:
        await self.callbacks.stop()
        if self.worker:  # cancels its tasks: they go back in the queue for the other replicas
            await self._close_worker(self.worker)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        await self.pool.aclose()
        self.store.close()

    async def _run_worker(self, redis_settings: RedisSettings) -> None:
        """This replica's arq worker, while its engine can work: started once the engine is ready, closed
        (handing its tasks back) if the engine dies, started again after losing Redis."""
        while True:
            while not self.engine.ready:
                if self.engine.error:
                    log.error("this replica takes no job tasks: the engine failed (%s)", self.engine.error)
                    return
                await asyncio.sleep(0.2)
            self.worker = worker = self._worker(redis_settings)
            run = asyncio.create_task(worker.async_run())
            while not run.done() and self.engine.ready:
                await asyncio.wait({run}, timeout=1)
            if not run.done():  # the engine stopped under the worker
                await self._close_worker(worker)
                await asyncio.wait({run})
                continue
            if run.cancelled() or run.exception() is None:
                return
            e = run.exception()
            log.error("job worker stopped (%s: %s); starting again in 5 s", type(e).__name__, e)
            await asyncio.sleep(5)

    async def _close_worker(self, worker: Worker) -> None:
        """Close an arq worker, handing its tasks back. arq puts a cancelled task that had begun back in the
        queue, but one cancelled before it began keeps the in-progress mark set when it was taken (until
        JOB_LEASE_S), and Worker.close() then raises CancelledError from its gather, skipping the rest of its
        closing (and, uncaught, the rest of stop() and of the app's shutdown): here such tasks lose their
        mark, so that any replica takes them at once, and close() only finds finished tasks."""
        worker.handle_sig(signal.SIGUSR1)  # what close() does first: cancel its tasks and its polling loop
        tasks = dict(worker.tasks)
        if tasks:
            await asyncio.wait(tasks.values())
        for task_id in tasks:
            worker.tasks.pop(task_id, None)
        stranded = [task_id for task_id, t in tasks.items() if t.cancelled()]
        for task_id, t in tasks.items():
            if not t.cancelled() and t.exception():
                log.warning("job task %s ended with %r", task_id, t.exception())
        try:
            if stranded:
                await self.pool.delete(*(in_progress_key_prefix + task_id for task_id in stranded))
            await worker.close()
        except Exception as e:  # Redis away: the marks expire after JOB_LEASE_S
            log.warning("closing the job worker: %s: %s", type(e).__name__, e)

    def _worker(self, redis_settings: RedisSettings) -> Worker:
        timeout = self.settings.job_page_timeout_s + 5  # arq's own limit; ours (inside ocr_page) comes first
        tries = self.settings.job_page_tries
        worker = Worker(
            functions=[
                func(_plan_job, name="plan_job", timeout=timeout, max_tries=tries),
                func(_ocr_page, name="ocr_page", timeout=timeout, max_tries=tries),
                func(_finish_job, name="finish_job", timeout=timeout, max_tries=tries),
            ],
            queue_name=self.queue_name,
            redis_settings=redis_settings,
            max_jobs=self.settings.job_page_workers or self.engine.capacity(),
            keep_result=3600,  # a task id stays taken for an hour after it ends (enqueue is a no-op)
            handle_signals=False,  # uvicorn owns the signals; stop() closes the worker
            ctx={"jobs": self},
            log_results=False,
        )
        worker.in_progress_timeout_s = self.settings.job_lease_s  # renewed by _renew_leases, not one long mark
        return worker

    async def _renew_leases(self) -> None:
        """Keep the in-progress marks of this replica's running tasks alive (PEXPIRE never revives a deleted one)."""
        lease_ms = int(self.settings.job_lease_s * 1000)
        while True:
            await asyncio.sleep(self.settings.job_lease_s / 3)
            tasks = self.worker.tasks if self.worker else {}
            running = [task_id for task_id, t in list(tasks.items()) if not t.done()]
            if not running:
                continue
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    for task_id in running:
                        pipe.pexpire(in_progress_key_prefix + task_id, lease_ms)
                    await pipe.execute()
            except Exception as e:  # Redis away for a moment: try again next round
                log.warning("could not renew %d task lease(s): %s", len(running), e)

    async def enqueue(self, job_id: str) -> None:
        try:
            await self.pool.enqueue_job("plan_job", job_id, _job_id=self.task_id("plan", job_id))
        except redis.RedisError as e:  # the sweeper enqueues it once Redis is back
            raise RedisUnavailable(e) from e

    def _options(self, job: dict) -> DocOptions:
        return DocOptions(**{k: v for k, v in job["options"].items() if k in DocOptions.__dataclass_fields__})

    def _plan_path(self, job_id: str) -> Path:
        return self.dir(job_id) / "plan.json"

    async def plan(self, job_id: str) -> None:
        """Check the job's files, list their pages and enqueue one task per page."""
        job = self.store.get(job_id)
        if job is None or job["state"] not in ACTIVE:
            return
        self.store.update(job_id, state="running", attempts=job["attempts"] + 1)
        self.emit(job_id, {"type": "state", "state": "running", "attempt": job["attempts"] + 1})
        if self._plan_path(job_id).exists():  # planned before a crash: enqueue its pages again (no-ops if queued)
            plan = json.loads(self._plan_path(job_id).read_text())
        else:
            plan = await self._plan_files(job)
        pages = [(i, n, p["kind"]) for i, p in enumerate(plan["files"]) for n in p["numbers"]]
        for i, n, kind in pages:
            await self.pool.enqueue_job("ocr_page", job_id, i, n, kind, _job_id=self.task_id("page", job_id, i, n))
        if not pages:  # every file failed its check
            await self._enqueue_finish(job_id)

    async def _plan_files(self, job: dict) -> dict:
        job_id, files, opts = job["id"], job["files"], self._options(job)
        stems = unique_stems([f["name"] for f in files])
        plan: dict = {"started": time.time(), "files": []}
        for i, f in enumerate(files):
            data = (self.dir(job_id) / "inputs" / f["stored"]).read_bytes()
            out = self.dir(job_id) / "out" / stems[i]
            try:
                doc = await asyncio.to_thread(plan_document, self.engine, self.settings, f["name"], data, out, opts)
            except InputError as e:
                f.update(state="failed", error={**e.body()["error"], "status": e.status}, pages_total=0)
                plan["files"].append({"stem": stems[i], "kind": None, "numbers": [], "page_count": 0})
                continue
            f.update(state="running", pages_total=len(doc.numbers), pages_done=0)
            plan["files"].append(
                {"stem": stems[i], "kind": doc.kind, "numbers": doc.numbers, "page_count": doc.page_count}
            )
        self.store.update(job_id, files=files)  # before plan.json: pages count against these totals
        tmp = self._plan_path(job_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(plan))
        tmp.replace(self._plan_path(job_id))
        return plan

    async def page(self, job_id: str, i: int, number: int, kind: str, job_try: int) -> None:
        """One page of a job; the page that completes the job enqueues finish_job."""
        job = self.store.get(job_id)
        if job is None or job["state"] not in ACTIVE:
            return  # cancelled or deleted meanwhile
        f = job["files"][i]
        out = self.dir(job_id) / "out" / unique_stems([x["name"] for x in job["files"]])[i]
        image_data = None if kind == "pdf" else (self.dir(job_id) / "inputs" / f["stored"]).read_bytes()
        record, file_error = None, None
        try:
            async with asyncio.timeout(self.settings.job_page_timeout_s):
                record = await process_page(
                    self.engine, self.settings, self.renderer, out, kind, number, self._options(job), image_data
                )
        except Exception as e:
            if isinstance(e, InputError):
                err = e
            elif isinstance(e, TimeoutError):
                limit = self.settings.job_page_timeout_s
                err = InputError(504, "page_timeout", f"the page took longer than {limit:g} s (JOB_PAGE_TIMEOUT_S)")
            else:
                log.exception("job %s: page %d of file %d failed", job_id, number, i)
                err = InputError(500, "page_failed", f"{type(e).__name__}: {e}")
            if err.status == 503 and job_try < self.settings.job_page_tries:
                raise Retry(defer=5) from e  # engine down here: try again (maybe on another replica)
            if kind == "pdf":  # one bad page does not sink its PDF
                record = save_error_page(out, number, err)
            else:  # a bad image fails its file, as in process_many
                file_error = {**err.body()["error"], "status": err.status}
        added, in_file, in_job = self.store.page_done(job_id, i, number)
        if added:
            if record is None and file_error is None:  # written by a run that was killed before counting it
                record = json.loads(page_path(out, number).read_text())
            self.store.mutate(job_id, lambda job: _page_progress(job, i, in_file, file_error))
            if record is not None:
                error = record.get("error")
                self.emit(job_id, {
                    "type": "page", "file": i, "name": f["name"], "page": record["page"],
                    "chars": len(record.get("text") or ""), "error": error.get("message") if error else None,
                    "pages_done": in_file, "pages_total": f["pages_total"], "replica": REPLICA,
                })  # fmt: skip
        if in_job and in_job >= sum(x["pages_total"] for x in job["files"]):
            await self._enqueue_finish(job_id)  # the page that completes the job (or a re-run of it)

    async def _enqueue_finish(self, job_id: str) -> None:
        await self.pool.enqueue_job("finish_job", job_id, _job_id=self.task_id("finish", job_id))

    async def finalize(self, job_id: str) -> None:
        """Every page is done: each file's Markdown and manifest, then results.json and the final state."""
        job = self.store.get(job_id)
        if job is None or job["state"] not in ACTIVE:
            return
        plan = json.loads(self._plan_path(job_id).read_text())
        opts, files = self._options(job), job["files"]
        seconds = time.time() - plan["started"]
        entries = []
        for f, p in zip(files, plan["files"], strict=True):
            if f["state"] == "failed":
                entries.append({"filename": f["name"], "stem": p["stem"], "success": False, "error": f["error"]})
                continue
            out = self.dir(job_id) / "out" / p["stem"]
            args = (out, p["stem"], f["name"], p["kind"], p["numbers"], p["page_count"], opts, seconds)
            entries.append(await asyncio.to_thread(finish_document, *args))
        await self.complete(job, files, entries)

    async def _sweeper(self) -> None:
        """One replica at a time (a Redis lock) removes expired jobs and re-enqueues jobs never planned."""
        interval = min(60.0, max(1.0, self.settings.result_ttl_s / 10))
        while True:
            try:
                await self._sweep(interval)
            except Exception as e:  # Redis away: next round
                log.warning("job sweep skipped: %s", e)
            await asyncio.sleep(interval)

    async def _sweep(self, interval: float) -> None:
        if not self.store.r.set(self.store.key("sweeper"), REPLICA, nx=True, px=int(interval * 900)):
            return  # another replica sweeps this round
        for job_id in self.store.expired(time.time() - self.settings.result_ttl_s):
            shutil.rmtree(self.dir(job_id), ignore_errors=True)
            self.store.delete(job_id)
            log.info("job %s expired", job_id)
        for job_id in self.store.ids(("queued",)):  # a replica died between accepting and enqueuing
            job = self.store.get(job_id)
            if job and time.time() - job["created"] > 60:
                await self.enqueue(job_id)  # a no-op while its plan task is queued or just done


def _page_progress(job: dict, i: int, done: int, file_error: dict | None) -> dict:
    files = job["files"]
    f = files[i]
    f["pages_done"] = max(f.get("pages_done", 0), done)
    if file_error:
        f.update(state="failed", error=file_error)
    elif f["state"] != "failed":
        f["state"] = "done" if f["pages_done"] >= f["pages_total"] else "running"
    return {"files": files}


# arq calls these module-level functions with its context; the replica's manager is ctx["jobs"]. A task that
# lost Redis for a moment runs again later (arq counts it against JOB_PAGE_TRIES) instead of failing for good.
async def _plan_job(ctx: dict, job_id: str) -> None:
    async with _retry_on_redis_error():
        await ctx["jobs"].plan(job_id)


async def _ocr_page(ctx: dict, job_id: str, i: int, number: int, kind: str) -> None:
    async with _retry_on_redis_error():
        await ctx["jobs"].page(job_id, i, number, kind, ctx["job_try"])


async def _finish_job(ctx: dict, job_id: str) -> None:
    async with _retry_on_redis_error():
        await ctx["jobs"].finalize(job_id)


@contextlib.asynccontextmanager
async def _retry_on_redis_error():
    try:
        yield
    except (redis.RedisError, RedisUnavailable) as e:
        log.warning("task stopped by Redis (%s: %s); it runs again in 5 s", type(e).__name__, e)
        raise Retry(defer=5) from e
