"""ASGI apps that tests run under uvicorn with several worker processes on one socket, the way
`vllm serve --api-server-count N` runs its API processes, each answer named by engines/vllm_served_by.py."""

from __future__ import annotations

import asyncio
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from engines.vllm_served_by import ServedBy


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def work(request: Request) -> JSONResponse:
    await asyncio.sleep(float(request.query_params.get("s", "0.2")))
    return JSONResponse({"pid": os.getpid()})


plain = Starlette(routes=[Route("/health", health), Route("/work", work, methods=["POST"])])
app = ServedBy(plain)


def served_ocr() -> ServedBy:
    """This service (its settings from the environment), each answer named by its worker process."""
    import serve_ocr

    return ServedBy(serve_ocr.app)
