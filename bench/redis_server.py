"""A throwaway Redis server on a free loopback port, for tests and benchmarks (JOB_BACKEND=redis).

Needs the redis-server binary: Debian's package (`apt-get install -y redis-server`, which .ci/run does),
or any redis-server on PATH; REDIS_SERVER names another binary.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def redis_binary() -> str:
    path = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not path:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server (or set REDIS_SERVER)")
    return path


def start_redis(workdir: Path, timeout: float = 20) -> tuple[subprocess.Popen, str]:
    """redis-server on 127.0.0.1 with no persistence; returns (process, redis:// URL) once it answers PING."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            client.ping()
            client.close()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer on {url} in {timeout:.0f} s; see {workdir / 'redis.log'}")
