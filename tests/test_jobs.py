"""Jobs: async submission, progress, results, cancel, expiry, a full queue, and a real kill -9 + restart."""

from __future__ import annotations

import io
import signal
import time
import zipfile

import httpx
import pytest
from conftest import DOCLING, cer, close_within, make_client, page_text, start_server, wait_ready

from config import Settings
from jobs.sqlite_store import SQLiteJobStore


def wait_state(client, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']}")


@pytest.fixture()
def job_client(tmp_path):
    with make_client(Settings(_env_file=None, data_dir=tmp_path, job_queue_max=2, result_ttl_s=3)) as c:
        wait_ready(c)
        yield c


def test_async_pdf_job_lifecycle(job_client):
    r = job_client.post("/pdf/ocr?async=true", files={"file": ("m.pdf", (DOCLING / "multi_page.pdf").read_bytes())})
    assert r.status_code == 202 and r.headers["location"] == r.json()["status_url"]
    job_id = r.json()["job_id"]
    assert job_client.get(f"/jobs/{job_id}/result").status_code in (409, 200)
    job = wait_state(job_client, job_id)
    assert job["state"] == "done"
    assert job["progress"]["pages_done"] == job["progress"]["pages_total"] == 5
    result = job_client.get(f"/jobs/{job_id}/result").json()
    pages = result["files"][0]["pages"]
    assert [p["page"] for p in pages] == [1, 2, 3, 4, 5]
    assert cer(pages[4]["text"], page_text("multi_page.pdf", 4)) <= 0.15
    events = job_client.app.state.jobs.store.events(job_id)
    ids = [i for i, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    kinds = [e["type"] for _, e in events]
    assert kinds[:2] == ["state", "state"] and kinds[-2:] == ["file", "done"]
    page_events = [e for _, e in events if e["type"] == "page"]
    assert sorted(e["page"] for e in page_events) == [1, 2, 3, 4, 5]
    assert all(e["chars"] > 0 and e["error"] is None and e["pages_total"] == 5 for e in page_events)
    assert [e.get("page") for _, e in job_client.app.state.jobs.store.events(job_id, after=ids[2])] == [
        e.get("page") for _, e in events[3:]
    ]
    z = zipfile.ZipFile(io.BytesIO(job_client.get(f"/jobs/{job_id}/download").content))
    assert "m/m.md" in z.namelist() and "results.json" in z.namelist()
    assert job_client.delete(f"/jobs/{job_id}").json()["state"] == "deleted"
    assert job_client.get(f"/jobs/{job_id}").status_code == 404


def test_batch_job_cancel_queue_full_and_expiry(job_client, scan_png):
    big = (DOCLING / "multi_page.pdf").read_bytes()
    first = job_client.post("/jobs", files=[("files", ("a.pdf", big))]).json()["job_id"]
    second = job_client.post("/batch/ocr?async=true", files=[("files", ("s.png", scan_png))]).json()["job_id"]
    full = job_client.post("/jobs", files=[("files", ("s.png", scan_png))])
    assert full.status_code == 429 and full.headers["retry-after"]
    assert job_client.delete(f"/jobs/{second}").json()["state"] == "cancelled"  # still queued behind the first
    assert job_client.get(f"/jobs/{second}").json()["state"] == "cancelled"
    assert wait_state(job_client, first)["state"] == "done"
    time.sleep(4.5)  # RESULT_TTL_S=3: the sweeper removes finished jobs
    assert job_client.get(f"/jobs/{first}").status_code == 404
    assert job_client.get("/jobs/nope").json()["error"]["code"] == "job_not_found"


def test_shutdown_with_a_job_running_and_one_queued(tmp_path):
    """The app stops (SIGTERM under uvicorn) while one job runs and another waits: the lifespan ends within
    seconds (it used to hang: the worker took its own cancellation for its job's and went back to its queue),
    both jobs stay unfinished in the store, and the next start runs them again."""
    settings = Settings(_env_file=None, data_dir=tmp_path, job_workers=1)
    pdf = (DOCLING / "multi_page.pdf").read_bytes()  # 5 pages: still running when the app stops
    client = make_client(settings).__enter__()
    wait_ready(client)
    running = client.post("/jobs", files=[("files", ("m.pdf", pdf))]).json()["job_id"]
    queued = client.post("/jobs", files=[("files", ("q.pdf", pdf))]).json()["job_id"]
    wait_state(client, running, ("running",), timeout=30)
    assert client.get(f"/jobs/{queued}").json()["state"] == "queued"  # JOB_WORKERS=1: behind the first

    assert close_within(client, 15) < 10

    store = SQLiteJobStore(tmp_path / "jobs.db")
    assert (store.get(running)["state"], store.get(running)["attempts"]) == ("running", 1)
    assert (store.get(queued)["state"], store.get(queued)["attempts"]) == ("queued", 0)  # never started
    for job_id in (running, queued):  # neither recorded as cancelled or failed
        assert store.get(job_id)["finished"] is None
        assert {e["type"] for _, e in store.events(job_id)} <= {"state", "page"}

    client = make_client(settings).__enter__()  # the next start resumes both, the interrupted one first
    wait_ready(client)
    deadline = time.time() + 30
    while not any(e.get("attempt") == 2 for _, e in client.app.state.jobs.store.events(running)):
        assert time.time() < deadline, client.get(f"/jobs/{running}").json()
        time.sleep(0.05)
    assert client.get(f"/jobs/{running}").json()["state"] == "running"
    assert client.get(f"/jobs/{queued}").json()["state"] == "queued"
    assert close_within(client, 15) < 10  # and stops again just as promptly


def test_job_survives_kill_9_and_restart(tmp_path):
    proc, base = start_server(tmp_path)
    try:
        r = httpx.post(
            f"{base}/jobs", files=[("files", ("m.pdf", (DOCLING / "multi_page.pdf").read_bytes()))], timeout=30
        )
        job_id = r.json()["job_id"]
        deadline = time.time() + 300  # a hang guard: pages take 3-20 s each on a shared 2-core machine
        while time.time() < deadline:  # kill once some but not all pages are done
            job = httpx.get(f"{base}/jobs/{job_id}").json()
            if 1 <= job["progress"]["pages_done"] < 5:
                break
            time.sleep(0.1)
        done_before = job["progress"]["pages_done"]
        assert 1 <= done_before < 5, job
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc, _ = start_server(tmp_path, base)
        deadline = time.time() + 300  # a hang guard: pages take 3-20 s each on a shared 2-core machine
        while time.time() < deadline:
            job = httpx.get(f"{base}/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert job["state"] == "done", job
        pages = httpx.get(f"{base}/jobs/{job_id}/result").json()["files"][0]["pages"]
        assert [p["page"] for p in pages] == [1, 2, 3, 4, 5]
        for p in pages:
            assert cer(p["text"], page_text("multi_page.pdf", p["page"] - 1)) <= 0.15
    finally:
        proc.kill()
        proc.wait(10)
