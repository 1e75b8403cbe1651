"""A client that leaves: its work is cancelled (so the engine request is aborted) and the request ends as a 499,
not as a CancelledError traceback per client in the server log; a server shutting down still cancels."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

import pipeline


def request(gone: asyncio.Event | None) -> Request:
    """A real Starlette request whose client disconnects once `gone` is set (never, if None)."""

    async def receive() -> dict:
        if gone is not None and gone.is_set():
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # Starlette polls inside a cancelled scope: no message yet
        return {}

    return Request({"type": "http", "method": "POST", "path": "/generate", "headers": []}, receive)


def test_a_client_that_leaves_cancels_its_work_and_gets_a_499():
    async def scenario() -> tuple[object, bool]:
        started, gone, cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def work() -> str:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"

        call = asyncio.create_task(pipeline.cancel_on_disconnect(request(gone), work()))
        await started.wait()
        gone.set()
        return await asyncio.wait_for(call, 5), cancelled.is_set()

    response, cancelled = asyncio.run(scenario())
    assert cancelled
    assert response.status_code == 499
    assert b"client_closed_request" in response.body


def test_work_that_finishes_is_returned_and_shutdown_still_cancels():
    async def quick() -> str:
        await asyncio.sleep(0.01)
        return "page text"

    assert asyncio.run(pipeline.cancel_on_disconnect(request(None), quick())) == "page text"

    async def shutdown() -> None:
        call = asyncio.create_task(pipeline.cancel_on_disconnect(request(None), asyncio.sleep(30)))
        await asyncio.sleep(0.1)
        call.cancel()  # what uvicorn does to in-flight requests at shutdown: not a client leaving
        await call

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(shutdown())
