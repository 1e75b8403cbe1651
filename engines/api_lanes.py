"""Connections to a server whose processes share one port, each known by the process behind it.

`vllm serve --api-server-count N` (the managed child) runs N API processes accepting on one socket: whichever
accepts first takes a connection, so a burst's pages pile onto a few of them while the rest idle (measured on an
H100: 2 of 14 API servers spent 27 of the 52 CPU-seconds that a 256-page burst took; bench/RESULTS.md). A lane is
one keep-alive connection (an httpx client of one connection) carrying one request at a time. Every answer names
the process behind its lane (`x-served-by`, engines/vllm_served_by.py), and a page takes an idle lane of the
process with the fewest pages in flight. `warm` opens lanes at start until every process holds its share; a lane
whose connection was closed reconnects on its next request and learns its (maybe new) process from the answer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

from engines.vllm_served_by import SERVED_BY

log = logging.getLogger("ocr.lanes")
WAVE = 8  # lanes opened at once while warming: few, so that idle processes share the accepts
WARM_S = 60.0


class Lane:
    """One connection: an httpx client of one connection, and the process its last answer named."""

    __slots__ = ("client", "server")

    def __init__(self, make_client: Callable[..., httpx.AsyncClient]):
        self.server: str | None = None
        self.client = make_client(event_hooks={"response": [self._learn]})

    async def _learn(self, response: httpx.Response) -> None:
        self.server = response.headers.get(SERVED_BY, self.server)


class Lanes:
    """Lanes to one server; `take()` lends the client of the best idle lane (a new lane when none is idle)."""

    def __init__(self, make_client: Callable[..., httpx.AsyncClient]):
        """`make_client(**kw)` builds an httpx client with the caller's settings and these keywords."""
        self._make = make_client
        self._tls = ssl.create_default_context()  # one for all lanes (loading CA files per client costs ~20 ms)
        self.idle: dict[str | None, list[Lane]] = {}  # by process (None: not known yet)
        self.in_flight: dict[str | None, int] = {}
        self._all: set[Lane] = set()

    def _new(self) -> Lane:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=None)
        lane = Lane(lambda **kw: self._make(verify=self._tls, limits=limits, **kw))
        self._all.add(lane)
        return lane

    def _pick(self) -> Lane:
        """An idle lane of the process with the fewest pages in flight, or a new lane."""
        ready = [s for s, lanes in self.idle.items() if lanes]
        if not ready:
            return self._new()
        best = min(ready, key=lambda s: self.in_flight.get(s, 0))
        return self.idle[best].pop()

    @asynccontextmanager
    async def take(self) -> AsyncIterator[httpx.AsyncClient]:
        lane = self._pick()
        server = lane.server
        self.in_flight[server] = self.in_flight.get(server, 0) + 1
        try:
            yield lane.client
        finally:
            self.in_flight[server] -= 1
            self.idle.setdefault(lane.server, []).append(lane)  # under the process its answer named

    def counts(self) -> dict[str, int]:
        """Idle lanes per known process."""
        return {s: len(lanes) for s, lanes in self.idle.items() if s is not None and lanes}

    async def _drop(self, lane: Lane) -> None:
        self._all.discard(lane)
        await lane.client.aclose()

    async def warm(self, url: str, servers: int, per_server: int, within_s: float = WARM_S) -> dict[str, int]:
        """Open lanes (a GET of `url` on each, WAVE at a time) until `servers` processes hold `per_server` idle
        lanes each, or `within_s` has passed (API processes may start answering seconds apart); a lane beyond its
        process's share is closed. Stops at once when the server does not name its processes (then lanes are
        made as pages need them). Returns the idle lanes per process."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            have = self.counts()
            missing = sum(max(0, per_server - n) for n in have.values()) + per_server * max(0, servers - len(have))
            if not missing:
                break
            new = [self._new() for _ in range(min(WAVE, missing))]
            answers = await asyncio.gather(*(lane.client.get(url) for lane in new), return_exceptions=True)
            for lane, answer in zip(new, answers, strict=True):
                kept = self.idle.setdefault(lane.server, []) if lane.server else None
                if isinstance(answer, BaseException) or kept is None or len(kept) >= per_server:
                    await self._drop(lane)
                else:
                    kept.append(lane)
            if not any(lane.server for lane in new):
                failed = sum(isinstance(a, BaseException) for a in answers)
                why = f"{failed} of {len(new)} GETs failed" if failed else f"no {SERVED_BY} header"
                log.info("%s names no process (%s): lanes are made as pages need them", url, why)
                break
            if self.counts() == have:  # this wave found nothing new: let the other processes come up
                await asyncio.sleep(0.05)
        have = self.counts()
        log.info("lanes per API process: %s", dict(sorted(have.items())))
        return have

    def info(self) -> dict:
        return {
            "lanes": dict(sorted((str(s), len(v)) for s, v in self.idle.items() if v)),
            "in_flight": dict(sorted((str(s), n) for s, n in self.in_flight.items() if n)),
        }

    async def aclose(self) -> None:
        for lane in list(self._all):
            await self._drop(lane)
        self.idle.clear()
