"""Job callbacks: when a job ends, POST its final status to the `callback_url` given at submission.

Body (JSON): job_id, state, error, status_url, result_url, download_url (absolute, from the submission's
base URL), finished (epoch s), attempt, sent_at (epoch s). Headers:
    X-OCR-Signature: sha256=<hex HMAC-SHA256 of the raw body, key CALLBACK_SECRET>   (absent without a secret)
    X-OCR-Timestamp: <sent_at>        (also inside the signed body: receivers can refuse old deliveries)
    X-OCR-Job-Id: <job_id>
The URL is checked by the same rules as URL inputs (inputs.pinned: public addresses only unless allowed,
connection pinned to the checked address) at submission and again before every attempt. A 2xx answer
delivers; anything else is retried CALLBACK_RETRIES times, waiting CALLBACK_BACKOFF_S, then twice as long
each time. Every attempt is logged in the job's event log as {"type": "callback", ...}; that log is also
the persistence: a finished job with a callback_url and neither a delivered nor a gave-up callback event is
pending, and is picked up again when the service starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Protocol

import httpx

from config import Settings
from errors import InputError
from inputs import pinned
from jobs.store import FINAL, JobStore

log = logging.getLogger("ocr.callbacks")
SIGNATURE_HEADER = "X-OCR-Signature"
TIMESTAMP_HEADER = "X-OCR-Timestamp"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does (constant-time compare); used by the tests."""
    return hmac.compare_digest(sign(secret, body), signature)


async def check_url(url: str | None, settings: Settings) -> str | None:
    """Refuse (4xx) a callback URL that URL inputs could not reach either; None/'' = no callback."""
    if not url or not url.strip():
        return None
    url = url.strip()
    if len(url) > 2048:
        raise InputError(400, "bad_url", "callback_url is longer than 2048 characters")
    await pinned(url, settings)
    return url


async def submission_options(settings: Settings, callback_url: str | None, base_url: str) -> dict:
    """Job options for a callback (the URL is checked now: 4xx if it may not be reached), or none.
    `base_url` (the submission's) makes the links in the body absolute."""
    url = await check_url(callback_url, settings)
    return {"callback_url": url, "public_base": base_url} if url else {}


def _outcome(events: list[tuple[int, dict]]) -> tuple[bool, int]:
    """(settled, attempts so far) from a job's event log."""
    attempts = [e for _, e in events if e.get("type") == "callback"]
    settled = any(e.get("delivered") or e.get("gave_up") for e in attempts)
    return settled, sum("attempt" in e for e in attempts)


class CallbackHost(Protocol):
    """What Callbacks uses of the job manager that owns it (jobs/manager.py): its settings and store, a job's
    public view (the links in the body), and its event log (every attempt)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> JobStore: ...

    def public(self, job: dict) -> dict: ...

    def emit(self, job_id: str, event: dict) -> int: ...


class Callbacks:
    """Delivers callbacks of one job manager's jobs in background tasks."""

    def __init__(self, jobs: CallbackHost):
        self.jobs = jobs
        self.settings = jobs.settings
        self._tasks: dict[str, asyncio.Task] = {}

    def job_finished(self, job_id: str) -> None:
        job = self.jobs.store.get(job_id)
        if job and job["options"].get("callback_url") and job_id not in self._tasks:
            self._tasks[job_id] = asyncio.create_task(self._deliver(job_id))

    def resume(self) -> int:
        """Start the pending deliveries left by an earlier process; returns how many."""
        count = 0
        for job_id in self.jobs.store.ids(FINAL):
            job = self.jobs.store.get(job_id)
            if job and job["options"].get("callback_url") and not _outcome(self.jobs.store.events(job_id))[0]:
                self.job_finished(job_id)
                count += 1
        if count:
            log.info("resuming %d pending callback(s)", count)
        return count

    async def stop(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        for t in list(self._tasks.values()):
            with contextlib.suppress(BaseException):
                await t

    def body(self, job: dict, attempt: int) -> bytes:
        public = self.jobs.public(job)
        base = (job["options"].get("public_base") or "").rstrip("/")
        payload = {
            "job_id": job["id"],
            "state": job["state"],
            "error": job["error"],
            "status_url": base + public["status_url"],
            "result_url": base + public["result_url"],
            "download_url": base + public["download_url"],
            "finished": job["finished"],
            "attempt": attempt,
            "sent_at": round(time.time(), 3),
        }
        return json.dumps(payload).encode()

    async def _post(self, url: str, body: bytes, job_id: str) -> int:
        target, headers, host = await pinned(url, self.settings)
        headers = {**headers, "Content-Type": "application/json", "X-OCR-Job-Id": job_id}
        headers[TIMESTAMP_HEADER] = str(json.loads(body)["sent_at"])
        if self.settings.callback_secret:
            headers[SIGNATURE_HEADER] = sign(self.settings.callback_secret, body)
        timeout = httpx.Timeout(self.settings.callback_timeout_s)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            req = client.build_request("POST", target, content=body, headers=headers, extensions={"sni_hostname": host})
            resp = await client.send(req)
            return resp.status_code

    async def _deliver(self, job_id: str) -> None:
        try:
            settled, attempt = _outcome(self.jobs.store.events(job_id))
            total = 1 + self.settings.callback_retries
            while not settled and attempt < total:
                job = self.jobs.store.get(job_id)
                if job is None:
                    return
                if attempt:  # a retry (also the first one after a restart)
                    await asyncio.sleep(self.settings.callback_backoff_s * 2 ** (attempt - 1))
                attempt += 1
                url = job["options"]["callback_url"]
                event: dict = {"type": "callback", "attempt": attempt, "url": url, "status": None, "error": None}
                try:
                    status = await self._post(url, self.body(job, attempt), job_id)
                    event.update(status=status, delivered=200 <= status < 300)
                    if not event["delivered"]:
                        event["error"] = f"the receiver answered HTTP {status}"
                except InputError as e:  # refused by the address rules: no point retrying (DNS may come back)
                    event.update(delivered=False, error=e.message, gave_up=e.code != "url_unresolvable")
                except (httpx.HTTPError, OSError) as e:
                    event.update(delivered=False, error=f"{type(e).__name__}: {e}")
                if not event["delivered"] and attempt >= total:
                    event["gave_up"] = True
                self.jobs.emit(job_id, event)
                log.info("callback of job %s, attempt %d: %s", job_id, attempt, event["error"] or event["status"])
                settled = event["delivered"] or event.get("gave_up", False)
        finally:
            self._tasks.pop(job_id, None)
