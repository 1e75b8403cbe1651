"""What JOB_BACKEND=redis costs Redis per page, to see what breaks first as replicas grow.

Runs a throwaway redis-server (bench/redis_server.py) and, with no OCR, replays what replicas do:
  bookkeeping: W processes (replicas) finish the pages of one job exactly as jobs/distributed.py does
               (count the page once, update the job's progress in an optimistic transaction, log its event);
  queue:       enqueue page tasks with arq, then W worker processes (arq, as in the app) run them as no-ops;
  idle:        what one idle replica's worker costs Redis per second (arq polls the queue).
Prints, per page or task: Redis commands, Redis main-thread CPU (microseconds), transaction retries, and the
wall time of the run. Redis runs commands on one thread, so 1e6 / (CPU us per page) bounds pages per second.

    python bench/redis_jobs_bench.py [--pages 1000] [--writers 1,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import redis
from arq import Worker, create_pool
from arq.connections import RedisSettings
from arq.worker import func

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from redis_server import start_redis  # noqa: E402
from service import stop_service  # noqa: E402

from jobs.distributed import _page_progress  # noqa: E402
from jobs.redis_store import RedisJobStore  # noqa: E402


def redis_usage(r: redis.Redis) -> tuple[int, float]:
    """(commands processed, main-thread CPU seconds) of the server so far."""
    stats, cpu = r.info("stats"), r.info("cpu")
    return int(stats["total_commands_processed"]), cpu["used_cpu_user_main_thread"] + cpu["used_cpu_sys_main_thread"]


def _finish_pages(args: tuple[str, str, list[tuple[int, int]]]) -> int:
    url, job_id, pages = args
    store = RedisJobStore(url, prefix="bench")
    for i, n in pages:
        added, in_file, _ = store.page_done(job_id, i, n)
        if added:
            store.mutate(job_id, lambda job, i=i, d=in_file: _page_progress(job, i, d, None))
            event = {"type": "page", "file": i, "name": "m.pdf", "page": n, "chars": 2000, "error": None}
            store.append_event(job_id, {**event, "pages_done": in_file, "pages_total": 1000, "replica": "bench:1"})
    return store.conflicts


def bookkeeping(url: str, r: redis.Redis, files: int, pages_per_file: int, writers: int) -> dict:
    store = RedisJobStore(url, prefix="bench")
    job_id = f"job-{files}-{pages_per_file}-{writers}"
    entries = [
        {"name": f"scan_{i:04d}.pdf", "stored": f"{i:04d}_scan_{i:04d}.pdf", "state": "running",
         "pages_done": 0, "pages_total": pages_per_file}
        for i in range(files)
    ]  # fmt: skip
    store.insert(job_id, "batch", {"dpi": 144, "prompt": None}, entries)
    pages = [(i, n) for i in range(files) for n in range(1, pages_per_file + 1)]
    shares = [(url, job_id, pages[k::writers]) for k in range(writers)]
    c0, cpu0 = redis_usage(r)
    t0 = time.perf_counter()
    with Pool(writers) as pool:
        conflicts = sum(pool.map(_finish_pages, shares))
    wall = time.perf_counter() - t0
    c1, cpu1 = redis_usage(r)
    done = store.get(job_id)["files"]
    assert sum(f["pages_done"] for f in done) == len(pages), "a page was lost or counted twice"
    n = len(pages)
    return {"cmds": (c1 - c0) / n, "cpu_us": (cpu1 - cpu0) * 1e6 / n, "retries": conflicts / n, "wall": wall, "n": n}


async def _noop(ctx: dict, job_id: str, i: int, n: int, kind: str) -> None:
    return None


def _drain(args: tuple[str, str]) -> int:
    url, queue = args

    async def run() -> int:
        w = Worker(
            functions=[func(_noop, name="ocr_page")], queue_name=queue, redis_settings=RedisSettings.from_dsn(url),
            burst=True, max_jobs=10, handle_signals=False, keep_result=3600, log_results=False,
        )  # fmt: skip
        await w.main()
        done = w.jobs_complete
        await w.close()
        return done

    return asyncio.run(run())


def queue(url: str, r: redis.Redis, tasks: int, workers: int) -> dict:
    queue_name = f"bench:queue:{workers}"

    async def enqueue() -> None:
        pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue_name)
        for n in range(tasks):
            await pool.enqueue_job("ocr_page", "job", 0, n, "pdf", _job_id=f"bench:page:{workers}:{n}")
        await pool.aclose()

    c0, cpu0 = redis_usage(r)
    asyncio.run(enqueue())
    c1, cpu1 = redis_usage(r)
    t0 = time.perf_counter()
    with Pool(workers) as pool:
        done = sum(pool.map(_drain, [(url, queue_name)] * workers))
    wall = time.perf_counter() - t0
    c2, cpu2 = redis_usage(r)
    assert done == tasks, f"{done} of {tasks} tasks ran"
    return {
        "enqueue_cmds": (c1 - c0) / tasks, "enqueue_cpu_us": (cpu1 - cpu0) * 1e6 / tasks,
        "run_cmds": (c2 - c1) / tasks, "run_cpu_us": (cpu2 - cpu1) * 1e6 / tasks, "wall": wall,
    }  # fmt: skip


def idle(url: str, r: redis.Redis, seconds: float = 5.0) -> tuple[float, float, float]:
    async def run() -> None:
        c0, cpu0 = redis_usage(r)
        await asyncio.sleep(seconds)  # no client: the server's own timers
        c1, cpu1 = redis_usage(r)
        settings = RedisSettings.from_dsn(url)
        w = Worker([func(_noop, name="ocr_page")], queue_name="bench:idle", redis_settings=settings)
        task = asyncio.create_task(w.async_run())
        await asyncio.sleep(1)
        c2, cpu2 = redis_usage(r)
        await asyncio.sleep(seconds)
        c3, cpu3 = redis_usage(r)
        base_cmds, base_cpu = (c1 - c0) / seconds, (cpu1 - cpu0) / seconds
        result.extend([(c3 - c2) / seconds - base_cmds, ((cpu3 - cpu2) / seconds - base_cpu) * 1e6, base_cpu * 1e6])
        task.cancel()
        await w.close()

    result: list[float] = []
    asyncio.run(run())
    return result[0], result[1], result[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--writers", default="1,4,8", help="replicas (processes) at once")
    args = ap.parse_args()
    writers = [int(x) for x in args.writers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp))
        r = redis.Redis.from_url(url)
        try:
            print(f"bookkeeping per page (Redis {r.info('server')['redis_version']}, {args.pages} pages)")
            print(f"{'job':>22} {'replicas':>8} {'cmds':>6} {'cpu us':>7} {'retries':>8} {'wall s':>7} {'x cpu':>6}")
            for files, per_file, label in ((1, args.pages, f"1 PDF x {args.pages} pages"), (500, 1, "500 images")):
                base = None
                for w in writers:
                    m = bookkeeping(url, r, files, per_file, w)
                    base = base or m["cpu_us"]
                    print(
                        f"{label:>22} {w:>8} {m['cmds']:>6.1f} {m['cpu_us']:>7.1f} {m['retries']:>8.3f} "
                        f"{m['wall']:>7.2f} {m['cpu_us'] / base:>6.2f}"
                    )
            print(f"\nqueue per task ({args.pages} no-op arq tasks)")
            print(f"{'workers':>8} {'enq cmds':>9} {'enq us':>7} {'run cmds':>9} {'run us':>7} {'wall s':>7}")
            for w in writers:
                m = queue(url, r, args.pages, w)
                print(
                    f"{w:>8} {m['enqueue_cmds']:>9.1f} {m['enqueue_cpu_us']:>7.1f} {m['run_cmds']:>9.1f} "
                    f"{m['run_cpu_us']:>7.1f} {m['wall']:>7.2f}"
                )
            cmds, cpu, base = idle(url, r)
            print(f"\none idle replica's worker: {cmds:.1f} commands/s, {cpu:.0f} us Redis CPU per second", end="")
            print(f" (over the idle server's own {base:.0f} us/s)")
        finally:
            r.close()
            stop_service(proc, grace=10)


if __name__ == "__main__":
    main()
