"""ASGI middleware: request ids and access logs, API keys, and the request-body cap enforced while streaming."""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import metrics
from config import Settings
from errors import error_response

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("ocr.access")
OPEN_PATHS = {"/ui", "/health", "/ready", "/ping", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
OPEN_PREFIXES = ("/ui/",)  # the web page's own files; it asks for a key before calling the API
# EventSource cannot send headers: only this route also takes the key as ?api_key= (never logged: our
# access log records the path without the query string, and uvicorn's gets it redacted).
QUERY_KEY_PATH = re.compile(r"^/jobs/[^/]+/events$")
_QUERY_KEY = re.compile(r"(api_key=)[^&\s]*")


class RedactApiKey(logging.Filter):
    """Hides ?api_key= values in uvicorn's access-log lines (its arguments hold the full path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "api_key=" in a for a in record.args):
            record.args = tuple(_QUERY_KEY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


_SAFE_ID = re.compile(r"^[\w.\-:]{1,128}$")


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._ocr_service = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    # Replace our own handler on re-configuration; leave handlers others installed (pytest, uvicorn --log-config).
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_ocr_service", False)] + [handler]
    root.setLevel(settings.log_level.upper())
    uvicorn_access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactApiKey) for f in uvicorn_access.filters):
        uvicorn_access.addFilter(RedactApiKey())


def load_api_keys(settings: Settings) -> list[str]:
    keys = [k for k in settings.api_keys if k]
    if settings.api_keys_file:
        lines = Path(settings.api_keys_file).read_text().splitlines()
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    return keys


class RequestContext:
    """X-Request-ID (kept if the client sent a sane one), a JSON access-log line, and request metrics."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - t0
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.observe_request(scope["method"], template, status["code"], seconds)
            access_log.info(
                "%s %s %s", scope["method"], scope["path"], status["code"],
                extra={"fields": {"method": scope["method"], "path": scope["path"], "route": template,
                                  "status": status["code"], "seconds": round(seconds, 4)}},
            )  # fmt: skip
            request_id_var.reset(token)


class ApiKeys:
    """401 unless the request carries a valid key (X-API-Key or Authorization: Bearer); health stays open."""

    def __init__(self, app: Any, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    def _valid(self, headers: dict, scope: dict) -> bool:
        key = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if not key and auth[:7].lower() == b"bearer ":
            key = auth[7:].strip()
        if not key and QUERY_KEY_PATH.match(scope["path"]):
            key = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key", [""])[0].encode()
        return bool(key) and any(hmac.compare_digest(key, k) for k in self.keys)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and self.keys and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            if not self._valid(dict(scope.get("headers", [])), scope):
                resp = error_response(
                    401, "unauthorized", "a valid API key is required (X-API-Key or Authorization: Bearer)"
                )
                resp.headers["WWW-Authenticate"] = "Bearer"
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over the limit: at once from Content-Length, else as soon as the streamed
    bytes pass it (chunked uploads), before the app buffers them."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send, int(declared))
            return
        state = {"seen": 0, "refused": False, "started": False}

        async def counting_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > self.limit and not state["refused"]:
                    state["refused"] = True
                    if not state["started"]:
                        await self._refuse(scope, receive, send, state["seen"])
                    return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def guarded_send(message: dict) -> None:
            if state["refused"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, scope: dict, receive: Any, send: Any, size: int) -> None:
        msg = f"request body is over the limit of {self.limit} bytes (got {size}+); see MAX_UPLOAD_BYTES"
        await error_response(413, "request_too_large", msg)(scope, receive, send)
