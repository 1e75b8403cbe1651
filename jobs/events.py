"""A job's event log as server-sent events (GET /jobs/{id}/events).

Each event goes out as `id: N` / `event: TYPE` / `data: JSON`, so a browser's EventSource (or any client
sending `Last-Event-ID: N`) resumes after the last event it saw, also after a server restart: the log lives
in the job store. The stream ends after the job's final event (done, failed or cancelled), sends a comment
line while idle so proxies keep the connection open, and stops when the client goes away.

New events wake the stream at once (JobManager.emit notifies); a short poll of the store covers events
written by another process (a replica sharing the store).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from jobs.store import FINAL, JobStore

POLL_S = 1.0  # store re-read interval when no notification arrives
RETRY_MS = 2000  # what EventSource waits before reconnecting


class Notifier:
    """Wakes the streams of a job when it logs an event (same process)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def notify(self, job_id: str) -> None:
        for ev in self._waiters.get(job_id, ()):
            ev.set()

    async def wait(self, job_id: str, timeout: float) -> None:
        ev = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._waiters[job_id]


def format_event(event_id: int, event: dict) -> str:
    return f"id: {event_id}\nevent: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n"


def parse_last_id(header: str | None, query: int | None) -> int:
    """Last-Event-ID (what EventSource sends on reconnect) wins over ?after=; junk counts as 0."""
    if header and header.strip().isdigit():
        return int(header.strip())
    return max(0, query or 0)


async def stream(
    store: JobStore,
    notifier: Notifier,
    job_id: str,
    after: int,
    disconnected: Callable[[], Awaitable[bool]],
    keepalive_s: float,
) -> AsyncIterator[str]:
    """SSE text for the job's events with id > after, until its final event or the client leaves."""
    yield f"retry: {RETRY_MS}\n\n"
    last_write = time.monotonic()
    while True:
        events = store.events(job_id, after)
        for event_id, event in events:
            yield format_event(event_id, event)
            after = event_id
            last_write = time.monotonic()
            if event.get("type") in FINAL:
                return
        if not events:
            job = store.get(job_id)
            if job is None:  # deleted (or expired) while we watched
                yield 'event: gone\ndata: {"type": "gone"}\n\n'
                return
            if job["state"] in FINAL and not store.events(job_id, after):
                return  # the final event was already sent before this connection (Last-Event-ID past it)
        if await disconnected():
            return
        idle = time.monotonic() - last_write
        if idle >= keepalive_s:
            yield ": keep-alive\n\n"
            last_write = time.monotonic()
            idle = 0.0
        await notifier.wait(job_id, min(POLL_S, keepalive_s - idle))
