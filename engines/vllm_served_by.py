"""`x-served-by: <pid>` on every answer of a vLLM API server, added through vLLM's `--middleware` hook.

`vllm serve --api-server-count N` runs N API processes on one listening socket, so which one prepares a page
depends on which accepted the connection. With this header the front learns the process behind each of its
connections and sends each page to the least busy one (engines/api_lanes.py). Plain ASGI: no vLLM import.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

SERVED_BY = "x-served-by"

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class ServedBy:
    """ASGI middleware: every HTTP answer names this process (its pid)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Message, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = (SERVED_BY.encode(), str(os.getpid()).encode())

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_named)
