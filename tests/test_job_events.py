"""GET /jobs/{id}/events: server-sent events from a real uvicorn server: one event per page in order, resuming
with Last-Event-ID without losing or repeating events, and after a kill -9 + restart of the server."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
from conftest import DOCLING, make_client, start_server, wait_ready

from config import Settings
from jobs.events import format_event, parse_last_id, stream


def read_events(base: str, job_id: str, last_id: int | None = None, stop_after: int | None = None):
    """(events as (id, type, data), raw text) from one connection; stops after `stop_after` events if given."""
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    out, raw = [], []
    with httpx.stream("GET", f"{base}/jobs/{job_id}/events", headers=headers, timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        block: dict = {}
        for line in r.iter_lines():
            raw.append(line)
            if line.startswith("id: "):
                block["id"] = int(line[4:])
            elif line.startswith("event: "):
                block["type"] = line[7:]
            elif line.startswith("data: "):
                block["data"] = json.loads(line[6:])
            elif line == "" and "id" in block:
                out.append((block["id"], block["type"], block["data"]))
                block = {}
                if stop_after is not None and len(out) >= stop_after:
                    break
    return out, "\n".join(raw)


def submit(base: str, pages: str) -> str:
    files = [("files", ("m.pdf", (DOCLING / "multi_page.pdf").read_bytes()))]
    r = httpx.post(f"{base}/jobs", files=files, data={"pages": pages}, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def test_events_per_page_in_order_and_resume_with_last_event_id(tmp_path):
    proc, base = start_server(tmp_path, env={"EVENTS_KEEPALIVE_S": "0.3"})
    try:
        job_id = submit(base, "1-3")
        first, _ = read_events(base, job_id, stop_after=2)  # then the client goes away
        assert [t for _, t, _ in first] == ["state", "state"]
        rest, raw = read_events(base, job_id, last_id=first[-1][0])  # a reconnect, as EventSource does it
        assert rest[-1][1] == "done"  # ...and the stream ends after the final event
        seen = first + rest
        full, _ = read_events(base, job_id)  # the whole log again, from the start
        assert [e[0] for e in seen] == [e[0] for e in full]  # nothing lost, nothing repeated
        ids = [e[0] for e in seen]
        assert ids == sorted(set(ids))
        pages = [d for _, t, d in seen if t == "page"]
        assert len(pages) == 3 and sorted(p["page"] for p in pages) == [1, 2, 3]
        assert [p["pages_done"] for p in pages] == [1, 2, 3]
        assert all(p["file"] == 0 and p["chars"] > 0 and p["error"] is None for p in pages)
        assert [t for _, t, _ in seen][-2:] == ["file", "done"]
        assert ": keep-alive" in raw  # idle comments while a page was being read
        # Past the final event: the stream ends at once with nothing more to send.
        assert read_events(base, job_id, last_id=full[-1][0])[0] == []
        assert httpx.get(f"{base}/jobs/nope/events").json()["error"]["code"] == "job_not_found"
    finally:
        proc.kill()
        proc.wait(10)


def test_events_resume_after_server_restart(tmp_path):
    proc, base = start_server(tmp_path)
    try:
        job_id = submit(base, "1-3")
        before, _ = read_events(base, job_id, stop_after=3)  # queued, running, the first page
        assert before[-1][1] == "page"
        job = httpx.get(f"{base}/jobs/{job_id}").json()
        assert job["state"] == "running" and job["progress"]["pages_done"] < 3, job
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc, _ = start_server(tmp_path, base)
        after, _ = read_events(base, job_id, last_id=before[-1][0])
        assert after[-1][1] == "done"
        assert min(e[0] for e in after) > before[-1][0]  # nothing repeated
        assert any(t == "state" and d.get("attempt") == 2 for _, t, d in after)  # the job resumed
        pages = [d["page"] for _, t, d in before + after if t == "page"]
        assert sorted(pages) == [1, 2, 3]  # every page once, across both servers
    finally:
        proc.kill()
        proc.wait(10)


def test_event_format_and_last_id_parsing(tmp_path):
    assert format_event(7, {"type": "page", "page": 2}) == 'id: 7\nevent: page\ndata: {"type": "page", "page": 2}\n\n'
    assert parse_last_id("12", 3) == 12 and parse_last_id(None, 3) == 3 and parse_last_id("junk", None) == 0
    with make_client(Settings(_env_file=None, data_dir=tmp_path, job_queue_max=5)) as c:
        wait_ready(c)
        assert c.get("/jobs/abc/events").status_code == 404
        jobs = c.app.state.jobs
        job_id = c.post("/jobs", files=[("files", ("m.pdf", (DOCLING / "multi_page.pdf").read_bytes()))]).json()[
            "job_id"
        ]

        async def gone() -> bool:
            return True

        async def collect() -> list[str]:  # a client that has left: the stream ends without waiting for the job
            return [chunk async for chunk in stream(jobs.store, jobs.notifier, job_id, 10**9, gone, 60)]

        assert asyncio.run(collect()) == ["retry: 2000\n\n"]
        c.delete(f"/jobs/{job_id}")
