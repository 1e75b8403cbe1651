"""Intake in arrival order: a burst's uploads are read and handed to the engine a few at a time.

Without it, a burst of N uploads is served round-robin by the one event loop: every request's body, JSON
parse and hand-off interleave with all the others', so the first page reaches the engine about when the last
one does. With INTAKE_SLOTS = k, at most k requests read their body and get ready at once; the others wait,
in arrival order, before reading theirs (the server stops reading their sockets, so their bytes wait in the
kernel), and pages reach the engine at a steady rate from the burst's first moment. On an H100 (256-page
burst, bench/RESULTS.md) vLLM's front median fell from 0.65-1.16 s to 0.32-0.61 s and its first engine step
came 0.5-0.9 s earlier; pages/s stayed within the spread between starts.
- A request takes a slot when it first reads its body; GET and other body-less requests never wait.
- The slot is given back when the request is handed to its engine (`handed_off`), when its answer starts,
  when it ends, or after INTAKE_HOLD_S (0.25 s), whichever comes first: a slow upload (a client far away)
  goes on reading without one, so slow clients cost the line at most that much each.
- A client that leaves while waiting takes its place in the line with it.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from metrics import INTAKE_WAITING

_slot: contextvars.ContextVar[Slot | None] = contextvars.ContextVar("intake_slot", default=None)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Slot:
    """One request's place: held from its first body read until released (once)."""

    def __init__(self, gate: Intake):
        self.gate = gate
        self.held = False
        self.done = False
        self._timer: asyncio.TimerHandle | None = None

    async def take(self) -> None:
        if self.held or self.done:
            return
        INTAKE_WAITING.inc()
        try:
            await self.gate.sem.acquire()
        finally:
            INTAKE_WAITING.dec()
        self.held = True
        self.gate.held += 1
        self._timer = asyncio.get_running_loop().call_later(self.gate.hold_s, self.release)

    def release(self) -> None:
        self.done = True
        if self.held:
            self.held = False
            self.gate.held -= 1
            if self._timer is not None:
                self._timer.cancel()
            self.gate.sem.release()


class Intake:
    """The slots (`slots` at once) and how long one may be held."""

    def __init__(self, slots: int, hold_s: float):
        self.slots, self.hold_s = slots, hold_s
        self.held = 0
        self.sem = asyncio.Semaphore(slots)  # FIFO: waiters are woken in the order they came

    def info(self) -> dict:
        return {"slots": self.slots, "held": self.held, "hold_s": self.hold_s}


def handed_off() -> None:
    """The current request's page is with the engine now: its intake slot goes to the next request."""
    slot = _slot.get()
    if slot is not None:
        slot.release()


class IntakeGate:
    """ASGI middleware: a slot around each body-carrying request's reading and preparation. The app's
    `state.intake` (made at start-up, in the serving event loop) is the gate; none: no limit."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        gate = getattr(scope["app"].state, "intake", None) if "app" in scope else None
        if gate is None or scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        slot = Slot(gate)
        token = _slot.set(slot)

        async def receive_in_turn() -> dict:
            await slot.take()
            return await receive()

        async def send_releasing(message: dict) -> None:
            if message["type"] == "http.response.start":
                slot.release()
            await send(message)

        try:
            await self.app(scope, receive_in_turn, send_releasing)
        finally:
            slot.release()
            _slot.reset(token)
