"""Watching a GPU run from the side: how busy the GPU was, and where a process's Python time went.

- `GpuBusy`: samples `nvidia-smi`'s utilization.gpu (the share of time a kernel was running), SM clock and
  power while a block runs; a mean well under 100% means the GPU waited on the CPU.
- `start_profile`: py-spy on a process (GIL holders, every thread), summarised by bench/pyspy_summary.py.
- `engine_core_pids` / `titled_pids`: vLLM's EngineCore (API server, ...) processes under a parent (the LLM
  class, the service, `vllm serve`).
- `CpuSplit`: the CPU seconds each process of the service used over a block, and the API servers' connections.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


class GpuBusy:
    """`with GpuBusy() as g: ...` then g.mean (percent, None without nvidia-smi), g.sm_mhz and g.watts (means of
    the SM clock and power draw: a GPU that clocks down runs slower steps for the same work)."""

    QUERY = "utilization.gpu,clocks.sm,power.draw"

    def __init__(self, every_ms: int = 100):
        self.every_ms = every_ms
        self.proc: subprocess.Popen | None = None
        self.mean: float | None = None
        self.sm_mhz: float | None = None
        self.watts: float | None = None

    def __enter__(self) -> GpuBusy:
        if smi := shutil.which("nvidia-smi"):
            cmd = [smi, f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits", f"-lms={self.every_ms}"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        rows = []
        for line in out.splitlines():
            try:
                rows.append([float(v) for v in line.split(",")])
            except ValueError:
                continue
        rows = [r for r in rows if len(r) == 3]
        if rows:
            self.mean, self.sm_mhz, self.watts = (round(sum(c) / len(rows), 1) for c in zip(*rows, strict=True))

    def summary(self) -> dict:
        return {"gpu_busy_mean_pct": self.mean, "gpu_sm_mhz_mean": self.sm_mhz, "gpu_watts_mean": self.watts}


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
    return titled_pids(parent, "EngineCore")


def titled_pids(parent: int, title: str) -> list[int]:
    """The pids of a parent's descendants whose vLLM process title starts with `title` ("APIServer", ...)."""
    import psutil

    procs = psutil.Process(parent).children(recursive=True)
    return [p.pid for p in procs if process_label(p).startswith(title)]


def process_label(proc) -> str:
    """A process's vLLM title ("APIServer_3", "EngineCore", ...; vLLM sets "VLLM::<name>"), else "pid N"."""
    try:
        title = " ".join(proc.cmdline())
    except Exception:
        return f"pid {proc.pid}"
    return title.split("::", 1)[1].split()[0] if title.startswith("VLLM::") else f"pid {proc.pid}"


def _busy(t) -> float:
    """Busy seconds in psutil.cpu_times(): all but idle and waiting for I/O."""
    return sum(t) - t.idle - t.iowait


class CpuSplit:
    """`with CpuSplit(parent, port) as c: ...` then c.summary(): the CPU seconds the parent and each of its
    descendants used in the block (API servers sorted, most first), the host's busy share, and how many
    client connections each API server held `spread_at` s in (port: where they listen)."""

    def __init__(self, parent: int, port: int | None = None, spread_at: float = 2.0):
        self.parent, self.port, self.spread_at = parent, port, spread_at
        self.spread: list[int] = []
        self._timer = None

    def _procs(self) -> list:
        import psutil

        root = psutil.Process(self.parent)
        return [root, *root.children(recursive=True)]

    def _cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self._procs():
            try:
                t = p.cpu_times()
            except Exception:
                continue
            label = "front" if p.pid == self.parent else process_label(p)
            out[label] = out.get(label, 0.0) + t.user + t.system
        return out

    def _count_connections(self) -> None:
        import psutil

        counts = []
        for pid in titled_pids(self.parent, "APIServer"):
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            counts.append(sum(c.status == "ESTABLISHED" and c.laddr.port == self.port for c in conns))
        self.spread = sorted(counts, reverse=True)

    def __enter__(self) -> CpuSplit:
        import threading

        import psutil

        self._before, self._host_before = self._cpu(), psutil.cpu_times()
        if self.port:
            self._timer = threading.Timer(self.spread_at, self._count_connections)
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        import psutil

        after, host = self._cpu(), psutil.cpu_times()
        if self._timer is not None:
            self._timer.join()
        self.seconds = {k: round(v - self._before.get(k, 0.0), 1) for k, v in after.items()}
        busy = _busy(host) - _busy(self._host_before)
        total = max(1e-9, sum(host) - sum(self._host_before))
        self.host_busy_pct = round(100 * busy / total, 1)
        # time the hypervisor ran something else on this machine's cores (a noisy neighbour), in core-seconds
        self.steal_s = round(getattr(host, "steal", 0.0) - getattr(self._host_before, "steal", 0.0), 2)

    def summary(self) -> dict:
        api = sorted((v for k, v in self.seconds.items() if k.startswith("APIServer")), reverse=True)
        rest = {k: v for k, v in self.seconds.items() if not k.startswith("APIServer") and v >= 0.5}
        out = {"host_busy_pct": self.host_busy_pct, "steal_s": self.steal_s, "api_cpu_s": api, "cpu_s": rest}
        return {**out, "api_conns": self.spread} if self.spread else out
