"""The intake (intake.py): uploads are read a few at a time, in arrival order; nothing else waits for it."""

from __future__ import annotations

import asyncio
import time

import httpx
from conftest import start_server
from load import run
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import intake
from metrics import INTAKE_WAITING


def gated_app(slots: int, hold_s: float, log: list, hand_off: dict[str, asyncio.Event]) -> Starlette:
    """A Starlette app behind the gate: POST /page/{n} reads its body (logged), then waits for its event and
    says it is handed off (also logged) before answering; GET /now answers at once."""

    async def page(request: Request) -> JSONResponse:
        n = request.path_params["n"]
        await request.body()
        log.append(("read", n))
        if n in hand_off:
            await hand_off[n].wait()
        intake.handed_off()
        log.append(("handed", n))
        return JSONResponse({"n": n})

    async def now(request: Request) -> JSONResponse:
        return JSONResponse({"held": request.app.state.intake.held})

    app = Starlette(routes=[Route("/page/{n}", page, methods=["POST"]), Route("/now", now)])
    app.add_middleware(intake.IntakeGate)
    app.state.intake = intake.Intake(slots, hold_s)
    return app


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_reads_in_arrival_order_a_few_at_a_time():
    async def main() -> None:
        log: list = []
        events = {str(i): asyncio.Event() for i in range(5)}
        app = gated_app(2, 30.0, log, events)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            tasks = []
            for i in range(5):
                tasks.append(asyncio.create_task(c.post(f"/page/{i}", content=b"x" * 1000)))
                await settle()  # request i arrives before request i + 1
            assert log == [("read", "0"), ("read", "1")]  # two slots: the others wait before their body
            assert INTAKE_WAITING._value.get() == 3
            assert (await c.get("/now")).json() == {"held": 2}  # a GET never waits for the intake
            events["1"].set()
            await settle()
            assert log[2:] == [("handed", "1"), ("read", "2")]  # the freed slot goes to the earliest waiter
            for e in events.values():
                e.set()
            answers = await asyncio.gather(*tasks)
        assert [r.json()["n"] for r in answers] == ["0", "1", "2", "3", "4"]
        assert [n for kind, n in log if kind == "read"] == ["0", "1", "2", "3", "4"]
        assert app.state.intake.held == 0 and INTAKE_WAITING._value.get() == 0

    asyncio.run(main())


def test_a_slow_request_holds_its_slot_for_hold_s_at_most():
    async def main() -> None:
        log: list = []
        stuck = {"0": asyncio.Event()}  # request 0 never hands off until the end
        app = gated_app(1, 0.1, log, stuck)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = asyncio.create_task(c.post("/page/0", content=b"x"))
            await settle()
            t0 = time.perf_counter()
            second = await c.post("/page/1", content=b"y")
            waited = time.perf_counter() - t0
            assert second.status_code == 200 and ("handed", "0") not in log
            assert 0.05 <= waited < 2.0  # waited for the hold to run out, not for request 0
            stuck["0"].set()
            assert (await first).status_code == 200
        assert app.state.intake.held == 0

    asyncio.run(main())


def test_a_client_that_leaves_while_waiting_gives_its_place_up():
    async def main() -> None:
        log: list = []
        events = {"0": asyncio.Event()}
        app = gated_app(1, 30.0, log, events)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = asyncio.create_task(c.post("/page/0", content=b"x"))
            await settle()
            leaving = asyncio.create_task(c.post("/page/1", content=b"x"))
            await settle()
            assert INTAKE_WAITING._value.get() == 1
            leaving.cancel()
            await settle()
            assert INTAKE_WAITING._value.get() == 0
            events["0"].set()
            await first
            assert (await c.post("/page/2", content=b"x")).status_code == 200
        assert [n for kind, n in log if kind == "read"] == ["0", "2"] and app.state.intake.held == 0

    asyncio.run(main())


def test_one_slot_serves_a_concurrent_load_right(tmp_path, scan_png):
    """The real server with a single intake slot: 16 requests, 8 at a time, every answer right, no slot left."""
    proc, base = start_server(tmp_path, env={"INTAKE_SLOTS": "1"})
    try:
        stats = asyncio.run(run(base, scan_png, n=16, c=8))
        info = httpx.get(f"{base}/").json()["intake"]
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        proc.kill()
        proc.wait(10)
    assert stats["errors"] == {} and stats["wrong_answers"] == 0
    assert info == {"slots": 1, "held": 0, "hold_s": 0.25}
    assert "ocr_intake_waiting 0.0" in metrics
