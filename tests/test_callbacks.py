"""Job callbacks against a real loopback HTTP receiver: HMAC signature, retries with backoff, a pending
callback that survives a kill -9 + restart, and callback URLs refused at submission (SSRF rules)."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import DOCLING, make_client, start_server, wait_ready

from config import Settings
from jobs.callbacks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

SECRET = "test-callback-secret"


class Receiver:
    """A loopback HTTP server that records every POST; answers 500 to the first `fail` of them."""

    def __init__(self, fail: int = 0):
        self.fail = fail
        self.calls: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(receiver.calls) < receiver.fail else 200
                receiver.calls.append({"headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, pred, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred(self.calls):
                return
            time.sleep(0.1)
        raise AssertionError(f"receiver saw {[c['status'] for c in self.calls]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver():
    r = Receiver(fail=2)
    yield r
    r.close()


def test_signed_callback_retried_until_delivered(tmp_path, receiver, scan_png):
    settings = Settings(
        _env_file=None, data_dir=tmp_path, url_allow_networks=["127.0.0.0/8"], callback_secret=SECRET,
        callback_retries=3, callback_backoff_s=0.2,
    )  # fmt: skip
    with make_client(settings) as c:
        wait_ready(c)
        r = c.post("/jobs", files=[("files", ("scan.png", scan_png))], data={"callback_url": receiver.url})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        receiver.wait(lambda calls: any(x["status"] == 200 for x in calls))
        assert [x["status"] for x in receiver.calls] == [500, 500, 200]  # failed twice, then delivered
        for n, call in enumerate(receiver.calls, 1):
            body, headers = call["body"], call["headers"]
            assert verify(SECRET, body, headers[SIGNATURE_HEADER])
            assert not verify("another secret", body, headers[SIGNATURE_HEADER])
            payload = json.loads(body)
            assert payload["attempt"] == n and headers[TIMESTAMP_HEADER] == str(payload["sent_at"])
            assert payload["job_id"] == job_id and payload["state"] == "done" and payload["error"] is None
            assert payload["status_url"] == f"http://testserver/jobs/{job_id}"
            assert payload["download_url"] == f"http://testserver/jobs/{job_id}/download"
            assert headers["X-OCR-Job-Id"] == job_id and headers["Content-Type"] == "application/json"
        deadline = time.time() + 10  # the delivered event is logged right after the answer
        while time.time() < deadline:
            logged = [e for _, e in c.app.state.jobs.store.events(job_id) if e["type"] == "callback"]
            if len(logged) == 3:
                break
            time.sleep(0.05)
        assert [(e["attempt"], e["delivered"], e["status"]) for e in logged] == [
            (1, False, 500), (2, False, 500), (3, True, 200)
        ]  # fmt: skip
        assert "HTTP 500" in logged[0]["error"]


def test_callback_gives_up_after_retries(tmp_path, scan_png):
    dead = Receiver(fail=100)
    settings = Settings(
        _env_file=None, data_dir=tmp_path, url_allow_networks=["127.0.0.0/8"], callback_retries=1,
        callback_backoff_s=0.1,
    )  # fmt: skip
    try:
        with make_client(settings) as c:
            wait_ready(c)
            r = c.post("/batch/ocr?async=true", files=[("files", ("s.png", scan_png))], data={"callback_url": dead.url})
            job_id = r.json()["job_id"]
            dead.wait(lambda calls: len(calls) >= 2)
            deadline = time.time() + 10
            while time.time() < deadline:
                logged = [e for _, e in c.app.state.jobs.store.events(job_id) if e["type"] == "callback"]
                if logged and logged[-1].get("gave_up"):
                    break
                time.sleep(0.05)
            assert [e["attempt"] for e in logged] == [1, 2] and logged[-1]["gave_up"] is True
            assert SIGNATURE_HEADER not in dead.calls[0]["headers"]  # no CALLBACK_SECRET: not signed
            time.sleep(0.5)
            assert len(dead.calls) == 2  # no more attempts
    finally:
        dead.close()


def test_pending_callback_survives_restart(tmp_path, scan_png):
    down = Receiver(fail=10**6)  # refuses everything until the server has been killed
    env = {"URL_ALLOW_NETWORKS": "127.0.0.0/8", "CALLBACK_SECRET": SECRET, "CALLBACK_RETRIES": "8"}
    env["CALLBACK_BACKOFF_S"] = "2"
    proc, base = start_server(tmp_path, env=env)
    try:
        r = httpx.post(
            f"{base}/jobs", files=[("files", ("s.png", scan_png))], data={"callback_url": down.url}, timeout=30
        )
        job_id = r.json()["job_id"]
        # Two failed attempts: the first one's outcome is in the job's event log (attempts are sequential).
        down.wait(lambda calls: len(calls) >= 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        failed_before = len(down.calls)
        down.fail = 0  # the receiver is back
        proc, _ = start_server(tmp_path, base, env=env)
        down.wait(lambda calls: any(x["status"] == 200 for x in calls))
        delivered = [x for x in down.calls if x["status"] == 200]
        assert len(delivered) == 1 and len(down.calls) > failed_before
        payload = json.loads(delivered[0]["body"])
        assert payload["job_id"] == job_id and payload["state"] == "done"
        assert payload["attempt"] >= 2  # the count went on from the log of the killed process
        assert verify(SECRET, delivered[0]["body"], delivered[0]["headers"][SIGNATURE_HEADER])
        time.sleep(1)
        proc.kill()  # a second restart finds the callback settled: nothing is sent again
        proc.wait(10)
        proc, _ = start_server(tmp_path, base, env=env)
        time.sleep(3)
        assert len([x for x in down.calls if x["status"] == 200]) == 1
    finally:
        proc.kill()
        proc.wait(10)
        down.close()


def test_callback_url_refused_at_submission(tmp_path, scan_png):
    pdf = (DOCLING / "multi_page.pdf").read_bytes()
    with make_client(Settings(_env_file=None, data_dir=tmp_path)) as c:  # loopback/private not allowed
        wait_ready(c)
        for url in ("http://127.0.0.1:9/hook", "http://10.0.0.1/hook", "http://[::1]/hook", "http://localhost/x"):
            r = c.post("/jobs", files=[("files", ("s.png", scan_png))], data={"callback_url": url})
            assert r.status_code == 400 and r.json()["error"]["code"] == "url_not_allowed", (url, r.text)
        r = c.post("/jobs", files=[("files", ("s.png", scan_png))], data={"callback_url": "ftp://example.com/x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_url_scheme"
        r = c.post("/pdf/ocr?async=true", files={"file": ("m.pdf", pdf)}, data={"callback_url": "http://127.0.0.1/"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "url_not_allowed"
        r = c.post("/batch/ocr?async=true", files=[("files", ("s.png", scan_png))], data={"callback_url": "http://0/"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "url_not_allowed"
        r = c.post("/pdf/ocr", files={"file": ("m.pdf", pdf)}, data={"callback_url": "https://example.com/"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "callback_needs_async"
        assert c.get("/jobs").json()["jobs"] == []  # nothing was queued
