"""Start the service (uvicorn on loopback) in a child process for benchmarks, checks and tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def start_service(
    env: dict[str, str],
    *,
    base: str | None = None,
    log: Path | None = None,
    wait_for: str = "/ready",
    timeout: float = 60,
    uvicorn_args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str]:
    """uvicorn serve_ocr:app with `env` over the current environment; returns (process, base URL) once
    `wait_for` answers 200. A server that exits or is not up within `timeout` seconds is killed and raises."""
    if base is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = f"http://127.0.0.1:{s.getsockname()[1]}"
    port = base.rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "uvicorn", "serve_ocr:app", "--host", "127.0.0.1", "--port", port, *uvicorn_args]
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}{wait_for}", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the service did not answer {wait_for} in {timeout:.0f} s" + (f"; see {log}" if log else ""))


def stop_service(proc: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM (in-flight requests finish), SIGKILL after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
