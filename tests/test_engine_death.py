"""When the engine's process dies: 503 with the reason everywhere, /ready 503, and the exit policy."""

from __future__ import annotations

import base64
import subprocess
import sys
import time

from conftest import make_client, wait_ready

from config import Settings
from serve_ocr import death_policy


def test_a_dead_engine_answers_503_with_the_reason(tmp_path, scan_png):
    settings = Settings(_env_file=None, data_dir=tmp_path, engine_death="stay")
    with make_client(settings) as client:
        wait_ready(client)
        client.app.state.engine.died("vLLM's engine-core process died: EngineDeadError")
        ready = client.get("/ready")
        assert ready.status_code == 503 and "engine-core process died" in ready.json()["error"]
        assert client.get("/ping").status_code == 503
        r = client.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert "engine-core process died" in r.json()["error"]["message"] and r.headers["retry-after"]
        g = client.post("/generate", json={"image_base64": base64.b64encode(scan_png).decode()})
        assert g.status_code == 503
        assert client.get("/health").status_code == 200  # the process itself still answers


def test_exit_policy_sends_sigterm_after_the_grace_period():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        t0 = time.monotonic()
        death_policy(Settings(_env_file=None, engine_death="exit", engine_death_grace_s=0), pid=child.pid)("test")
        assert child.wait(10) == -15 and time.monotonic() - t0 < 10  # SIGTERM: a non-zero exit for the container
    finally:
        child.kill()


def test_stay_policy_keeps_the_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        death_policy(Settings(_env_file=None, engine_death="stay"), pid=child.pid)("test")
        time.sleep(0.5)
        assert child.poll() is None
    finally:
        child.kill()
