"""One `vllm serve` child of the managed engine (engines/vllm_serve_engine.py): its process group, port, log,
the wait for its /health, its lanes, and its end.

The child runs in its own process group (its API servers and EngineCore join it), so that nothing of it outlives
it: `kill_group` on its exit, `terminate` (SIGTERM, then SIGKILL) on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from engines.api_lanes import Lanes
from engines.remote_engine import Backend

HEALTH_POLL_S = 0.5
# A Python exception line ("RuntimeError: ...") or a logged error ("(EngineCore pid=7) ERROR ...").
ERROR_LINE = re.compile(r"^(\(.*?\) )?([\w.]*(Error|Exception)\b|ERROR\b)")


def log_tail(path: Path, lines: int = 5) -> list[str]:
    """The last non-empty lines of a log file."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()][-lines:]


def exit_line(path: Path) -> str | None:
    """The log line that says why the child ended: the last exception or ERROR line, else the last line."""
    lines = log_tail(path, 40)
    return next((line for line in reversed(lines) if ERROR_LINE.search(line)), lines[-1] if lines else None)


def exit_text(code: int) -> str:
    """An exit status as words: a negative one is the signal that ended the process."""
    with contextlib.suppress(ValueError):
        if code < 0:
            return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"


def mps_running(env: Mapping[str, str]) -> bool:
    """Whether an MPS control daemon runs where CUDA processes started with `env` look for it
    (CUDA_MPS_PIPE_DIRECTORY, default /tmp/nvidia-mps): with it, the kernels of several processes on one GPU run
    side by side instead of taking turns. The daemon keeps its pid file there while it runs and removes it when
    it quits (its control socket stays behind; seen on an H100 host)."""
    folder = Path(env.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps")
    return (folder / "control").exists() and (folder / "nvidia-cuda-mps-control.pid").is_file()


class ServeChild:
    """One `vllm serve` process and the backend the engine sends its pages to."""

    def __init__(self, name: str, port: int, log_path: Path, backend: Backend, api_servers: int):
        """name: how messages call it ("vllm serve", "vllm serve 2"); backend: its entry among the engine's."""
        self.name, self.port, self.log_path, self.backend = name, port, log_path, backend
        self.api_servers = api_servers
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.exit: asyncio.Task | None = None  # its exit code, once it exits
        self.lanes: Lanes | None = None  # with 2+ API servers: connections by API process (engines/api_lanes.py)
        self._group_killed = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def spawn(
        self, argv: list[str], env: Mapping[str, str], cwd: Path, on_exit: Callable[[ServeChild, int], None]
    ) -> None:
        """Start it, its output to its log; `on_exit(child, code)` runs when it exits (its group is killed first)."""
        with self.log_path.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True,  # its own process group
            )  # fmt: skip
        self.exit = asyncio.create_task(self.proc.wait())

        def exited(task: asyncio.Task) -> None:
            self.kill_group()  # nothing of its group may outlive it
            if not task.cancelled():
                on_exit(self, task.result())

        self.exit.add_done_callback(exited)

    async def wait_up(self, deadline: float, limit_s: float) -> str | None:
        """None once it answers /health; else why not (it exited, or the time ran out)."""
        assert self.exit is not None

        def tail() -> str:
            return f"log {self.log_path}: " + " | ".join(log_tail(self.log_path))

        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            while not self.exit.done():
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return None
                if time.monotonic() > deadline:
                    return f"no answer on {self.url}/health in {limit_s:.0f} s (VLLM_SERVE_START_TIMEOUT_S); {tail()}"
                await asyncio.wait({self.exit}, timeout=HEALTH_POLL_S)
        return f"exited with {exit_text(self.exit.result())}; {tail()}"

    def exit_reason(self, code: int) -> str:
        """Why it ended, for /ready and the 503s: its exit status and its log's last error line."""
        why = exit_line(self.log_path)
        return f"{self.name} exited with {exit_text(code)}" + (f": {why}" if why else "") + f" (log {self.log_path})"

    def signal_group(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL to what is left of its group (once: the group id is free for reuse afterwards)."""
        if not self._group_killed:
            self._group_killed = True
            self.signal_group(signal.SIGKILL)

    async def terminate(self, grace: float) -> bool:
        """SIGTERM to its group, SIGKILL to what is left after `grace` s; False if SIGKILL was needed."""
        if self.exit is None:
            return True
        clean = True
        if not self.exit.done():
            self.signal_group(signal.SIGTERM)
            await asyncio.wait({self.exit}, timeout=grace)
            clean = self.exit.done()
        self.kill_group()
        await asyncio.wait({self.exit}, timeout=10)
        return clean

    async def close_lanes(self) -> None:
        if self.lanes:
            await self.lanes.aclose()

    def info(self) -> dict:
        return {
            "url": self.url,
            "pid": self.pid,
            "log": str(self.log_path),
            "api_servers": self.api_servers,
            **({"api_processes": self.lanes.info()} if self.lanes else {}),
        }
