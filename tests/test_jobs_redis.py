"""JOB_BACKEND=redis against a real redis-server (bench/redis_server.py): the store's contract, and two real
replicas sharing DATA_DIR where one is killed with SIGKILL mid-page and the other finishes the job."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import redis
from arq import Worker, create_pool
from arq.connections import RedisSettings
from arq.jobs import Job
from conftest import BROKEN, DOCLING, cer, close_within, make_client, page_text, wait_ready
from redis_server import start_redis
from service import start_service, stop_service

from config import Settings
from documents import PAGE_SPLIT
from jobs.redis_store import RedisJobStore


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_service(proc, grace=10)


def test_store_contract(redis_url):
    store = RedisJobStore(redis_url, prefix="contract")
    store.insert("a", "pdf", {"dpi": 144}, [{"name": "x.pdf", "state": "queued"}])
    time.sleep(0.01)
    store.insert("b", "batch", {}, [])
    assert store.count_active() == 2 and store.ids(("queued",)) == ["a", "b"]
    assert [j["id"] for j in store.recent()] == ["b", "a"]
    job = store.get("a")
    assert job["options"] == {"dpi": 144} and job["finished"] is None and job["attempts"] == 0

    ids: list[int] = []  # two "replicas" append to one job at once: ids stay unique and in order
    threads = [
        threading.Thread(target=lambda: ids.extend(store.append_event("a", {"n": k}) for k in range(50)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = store.events("a")
    assert [i for i, _ in events] == list(range(1, 101)) and sorted(ids) == list(range(1, 101))
    assert [i for i, _ in store.events("a", after=97)] == [98, 99, 100]

    assert store.page_done("a", 0, 3) == (True, 1, 1)
    assert store.page_done("a", 0, 3) == (False, 1, 1)  # the same page again counts once
    assert store.page_done("a", 1, 1) == (True, 1, 2)

    store.update("a", state="done", finished=time.time() - 100)
    assert store.count_active() == 1 and store.ids(("done",)) == ["a"]
    assert store.expired(time.time() - 50) == ["a"] and store.expired(time.time() - 200) == []
    store.delete("a")
    assert store.get("a") is None and store.events("a") == []
    store.update("a", state="running")  # a late writer on another replica does not bring it back
    assert store.get("a") is None and store.append_event("a", {}) == 0 and store.page_done("a", 0, 1) == (False, 0, 0)
    assert store.count_active() == 1 and store.ids(("queued", "running", "done")) == ["b"]


def test_batch_job_in_process_with_a_bad_file(redis_url, tmp_path, scan_png):
    settings = Settings(
        _env_file=None, data_dir=tmp_path, job_backend="redis", redis_url=redis_url, redis_prefix="inproc"
    )
    with make_client(settings) as c:
        wait_ready(c)
        files = [("files", ("scan.png", scan_png)), ("files", ("bad.jpg", (BROKEN / "truncated.jpg").read_bytes()))]
        job_id = c.post("/jobs", files=files).json()["job_id"]
        deadline = time.time() + 120
        while (job := c.get(f"/jobs/{job_id}").json())["state"] not in ("done", "failed") and time.time() < deadline:
            time.sleep(0.2)
        assert job["state"] == "done", job
        assert [f["state"] for f in job["files"]] == ["done", "failed"]
        entries = c.get(f"/jobs/{job_id}/result").json()["files"]
        assert entries[0]["success"] and "Docling" in entries[0]["text"]
        assert not entries[1]["success"] and entries[1]["error"]["code"] == "corrupt_image"
        assert entries[1]["error"]["status"] == 422
        assert c.delete(f"/jobs/{job_id}").json()["state"] == "deleted"
        assert c.get(f"/jobs/{job_id}").status_code == 404


@pytest.mark.parametrize("held", [False, True], ids=["mid_page", "taken_not_begun"])
def test_a_replica_stopped_mid_job_stops_promptly_and_hands_its_pages_back(redis_url, tmp_path, monkeypatch, held):
    """Stopping a replica (SIGTERM) with a job in flight: the app's shutdown ends within seconds and raises
    nothing, the job stays running, and its unfinished pages are back in the queue with no in-progress mark
    left, so that any replica takes them at once. held: the page tasks are held between arq taking them and
    beginning them; cancelled there, arq leaves their marks and Worker.close() raised CancelledError (a race
    a real shutdown hits now and then, made certain here). The stop comes once the replica has taken all the
    pages it can run: a stop while arq is taking one can still leave that page's mark (arq's own race, not
    handled: the mark expires after JOB_LEASE_S, as a killed replica's do)."""
    if held:
        run_job = Worker.run_job

        async def late_start(self, job_id: str, score: int) -> None:
            if ":page:" in job_id:
                await asyncio.sleep(60)
            await run_job(self, job_id, score)

        monkeypatch.setattr(Worker, "run_job", late_start)
    prefix = f"stop{int(held)}"
    settings = Settings(
        _env_file=None, data_dir=tmp_path, job_backend="redis", redis_url=redis_url, redis_prefix=prefix
    )
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisJobStore(redis_url, prefix=prefix)
    pdf = (DOCLING / "multi_page.pdf").read_bytes()
    client = make_client(settings).__enter__()
    wait_ready(client)
    job_id = client.post("/jobs", files=[("files", ("m.pdf", pdf))]).json()["job_id"]
    worker = None
    deadline = time.time() + 30
    while not worker or sum(":page:" in t for t in list(worker.tasks)) < min(5, worker.max_jobs):
        assert time.time() < deadline, client.get(f"/jobs/{job_id}").json()  # until the replica's slots are taken
        time.sleep(0.02)
        worker = client.app.state.jobs.worker
    assert r.keys(f"arq:in-progress:{prefix}:page:{job_id}:*")

    try:
        assert close_within(client, 15) < 10
        assert store.get(job_id)["state"] == "running"
        assert not r.keys(f"arq:in-progress:{prefix}:page:{job_id}:*")
        done = {e["page"] for _, e in store.events(job_id) if e["type"] == "page"}
        assert len(done) < 5
        waiting = set(r.zrange(f"{prefix}:queue", 0, -1))
        assert {f"{prefix}:page:{job_id}:0:{n}" for n in range(1, 6) if n not in done} <= waiting
    finally:
        r.close()
        store.close()


async def _page_tries(redis_url: str, job_id: str) -> list[int]:
    """How often arq ran each page task of the job (from the results it keeps for an hour)."""
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    infos = [await Job(f"ocr:page:{job_id}:0:{n}", pool).result_info() for n in range(1, 6)]
    await pool.aclose()
    return [i.job_try for i in infos]


def _descendants(pid: int) -> list[int]:
    """Ids of a process's children, grandchildren, ... (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _in_progress_pages(r: redis.Redis, job_id: str) -> list[str]:
    return r.keys(f"arq:in-progress:ocr:page:{job_id}:*")


def test_two_replicas_one_killed_mid_page(redis_url, tmp_path):
    """A 5-page PDF sent to replica A, watched on B; A is killed (SIGKILL) while both work on a page; B runs
    A's page again and finishes: every page exactly once, in results.json and the ZIP."""
    env = {
        "DATA_DIR": str(tmp_path / "data"), "ENGINE": "cpu", "NUM_WORKERS": "1", "CPU_ENGINE_THREADS": "1",
        "JOB_BACKEND": "redis", "REDIS_URL": redis_url, "JOB_QUEUE_MAX": "1", "JOB_LEASE_S": "6",
    }  # fmt: skip
    a, base_a = start_service(env, log=tmp_path / "a.log")
    b, base_b = start_service(env, log=tmp_path / "b.log")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisJobStore(redis_url)
    pdf = (DOCLING / "multi_page.pdf").read_bytes()
    try:
        resp = httpx.post(f"{base_a}/jobs", files=[("files", ("m.pdf", pdf))], timeout=30)
        assert resp.status_code == 202
        job_id = resp.json()["job_id"]
        full = httpx.post(f"{base_b}/jobs", files=[("files", ("m.pdf", pdf))], timeout=30)  # JOB_QUEUE_MAX=1
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full" and full.headers["retry-after"]

        deadline = time.time() + 180  # kill A once it has finished a page and both replicas are mid-page
        while time.time() < deadline:
            job = httpx.get(f"{base_b}/jobs/{job_id}").json()
            by_a = [e for _, e in store.events(job_id) if e.get("replica", "").endswith(f":{a.pid}")]
            if by_a and job["progress"]["pages_done"] <= 3 and len(_in_progress_pages(r, job_id)) == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"never saw both replicas mid-page: {job}")
        helpers = _descendants(a.pid)  # its render processes would outlive it
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        for pid in helpers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        done_at_kill = job["progress"]["pages_done"]

        deadline = time.time() + 180
        while (job := httpx.get(f"{base_b}/jobs/{job_id}").json())["state"] in ("queued", "running"):
            assert time.time() < deadline, job
            time.sleep(0.3)
        assert job["state"] == "done", job
        assert job["progress"]["pages_done"] == job["progress"]["pages_total"] == 5

        pages = httpx.get(f"{base_b}/jobs/{job_id}/result").json()["files"][0]["pages"]
        assert [p["page"] for p in pages] == [1, 2, 3, 4, 5]
        for p in pages:
            assert cer(p["text"], page_text("multi_page.pdf", p["page"] - 1)) <= 0.15
        z = zipfile.ZipFile(io.BytesIO(httpx.get(f"{base_b}/jobs/{job_id}/download", timeout=30).content))
        assert len(z.read("m/m.md").decode().split(PAGE_SPLIT)) == 5
        zipped = json.loads(z.read("results.json"))["files"][0]["pages"]
        assert [p["page"] for p in zipped] == [1, 2, 3, 4, 5]

        page_events = [e for _, e in store.events(job_id) if e["type"] == "page"]
        assert sorted(e["page"] for e in page_events) == [1, 2, 3, 4, 5]  # each page once
        replicas = {e["replica"].rsplit(":", 1)[1] for e in page_events}
        assert replicas == {str(a.pid), str(b.pid)}  # the pages fanned out to both replicas
        assert sum(e["replica"].endswith(f":{b.pid}") for e in page_events) >= 5 - done_at_kill

        assert max(asyncio.run(_page_tries(redis_url, job_id))) == 2  # A's page was handed to B after its lease ran out

        again = httpx.post(f"{base_b}/jobs", files=[("files", ("m.pdf", pdf))], timeout=30)
        assert again.status_code == 202  # the finished job no longer counts against JOB_QUEUE_MAX
        assert httpx.delete(f"{base_b}/jobs/{again.json()['job_id']}").json()["state"] == "cancelled"
    finally:
        a.kill()
        a.wait(10)
        stop_service(b)
        r.close()
        store.close()


def test_redis_down_gives_503_not_500(tmp_path, scan_png):
    proc, url = start_redis(tmp_path / "redis")
    settings = Settings(
        _env_file=None, data_dir=tmp_path / "data", job_backend="redis", redis_url=url, redis_prefix="down"
    )
    with make_client(settings) as c:
        wait_ready(c)
        assert c.get("/jobs/status").json()["backend"] == "redis"
        stop_service(proc, grace=10)  # Redis goes away under a running replica
        for r in (c.get("/jobs/nope"), c.post("/jobs", files=[("files", ("s.png", scan_png))])):
            assert r.status_code == 503 and r.json()["error"]["code"] == "jobs_unavailable", r.text
        assert c.post("/ocr/image/simple", files={"file": ("s.png", scan_png)}).status_code == 200  # the rest works
    with make_client(settings) as c:  # a replica that starts without Redis says why
        r = c.get("/jobs/nope")
        assert r.status_code == 503 and r.json()["error"]["code"] == "jobs_unavailable"
        assert "cannot reach Redis" in r.json()["error"]["message"]


def test_a_replica_whose_engine_died_takes_no_tasks(redis_url, tmp_path, scan_png):
    settings = Settings(
        _env_file=None, data_dir=tmp_path, job_backend="redis", redis_url=redis_url, redis_prefix="died",
        engine_death="stay",
    )  # fmt: skip
    with make_client(settings) as c:
        wait_ready(c)
        jobs = c.app.state.jobs
        deadline = time.time() + 30
        while jobs.worker is None and time.time() < deadline:
            time.sleep(0.1)
        assert jobs.worker is not None
        c.app.state.engine.died("the engine's process exited")
        while not jobs._tasks[0].done() and time.time() < deadline:  # its worker closes
            time.sleep(0.1)
        assert jobs._tasks[0].done()
        r = c.post("/jobs", files=[("files", ("s.png", scan_png))])
        assert r.status_code == 202, r.text  # still accepted: a replica with an engine will run it
        time.sleep(2)
        assert c.get(f"/jobs/{r.json()['job_id']}").json()["state"] == "queued"
