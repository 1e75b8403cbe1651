"""Watching a GPU run from the side: how busy the GPU was, and where a process's Python time went.

- `GpuBusy`: samples `nvidia-smi`'s utilization.gpu (the share of time a kernel was running) while a block
  runs; a mean well under 100% means the GPU waited on the CPU.
- `start_profile`: py-spy on a process (GIL holders, every thread), summarised by bench/pyspy_summary.py.
- `engine_core_pids`: vLLM's EngineCore processes under a parent (the LLM class, the service, `vllm serve`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


class GpuBusy:
    """`with GpuBusy() as g: ...` then g.mean (percent, None without nvidia-smi)."""

    def __init__(self, every_ms: int = 100):
        self.every_ms = every_ms
        self.proc: subprocess.Popen | None = None
        self.mean: float | None = None

    def __enter__(self) -> GpuBusy:
        if smi := shutil.which("nvidia-smi"):
            cmd = [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"-lms={self.every_ms}"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        vals = [float(v) for v in out.split() if v.replace(".", "", 1).isdigit()]
        self.mean = round(sum(vals) / len(vals), 1) if vals else None


def start_profile(pid: int, seconds: float, delay: float, out: Path, gil: bool = True) -> subprocess.Popen | None:
    """py-spy on `pid` (every thread; GIL holders only by default) after `delay` s, for `seconds` s."""
    where = os.pathsep.join(
        [str(Path(sys.executable).parent), "/tmp/spy/bin", "/tmp/site/bin", os.environ.get("PATH", "")]
    )
    spy = shutil.which("py-spy", path=where)
    if spy is None:
        print("py-spy not found: no profile", flush=True)
        return None
    cmd = [spy, "record", "--pid", str(pid), *(["--gil"] if gil else []), "--threads", "--rate", "100",
           "--duration", str(int(seconds)), "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(["bash", "-c", f"sleep {delay}; exec " + " ".join(cmd)])


def engine_core_pids(parent: int) -> list[int]:
    import psutil

    procs = psutil.Process(parent).children(recursive=True)
    return [p.pid for p in procs if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())]
