"""ENGINE=vllm with VLLM_API_SERVERS=N: the `vllm serve` command line, and the managed child's lifecycle.

vLLM is not installed here, so the lifecycle runs THIS service (CPU engine, its OpenAI-compatible /v1) as the
child, through the engine's argv override: a real process group, real pages, a real SIGKILL. A `sleep` started
in the child's process group stands in for vLLM's API-server and EngineCore processes: it must not outlive it.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jinja2
import pytest
from conftest import OCR_TEST_TEXT, cer, make_client, wait_ready
from PIL import Image

import pipeline
from config import Settings
from deepseek_ocr import EngineUnavailable, OCRResult
from engines import vllm_serve_engine
from engines.factory import build_engine
from engines.remote_engine import chat_body
from engines.vllm_engine import VLLMEngine, engine_args, engine_prompt
from engines.vllm_serve_child import exit_line, mps_running
from engines.vllm_serve_engine import (
    CHAT_TEMPLATE,
    NOT_SERVE_FLAGS,
    ROOT,
    ManagedVLLMServeEngine,
    api_servers,
    instance_settings,
    serve_argv,
    serve_env,
)
from process.image_process import MODES, OCR2_MODES, load_page

# --- the command line (pure) ---------------------------------------------------------------------------


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_serve_argv_is_the_in_process_engine_with_n_api_servers():
    s = Settings(_env_file=None, model_path="/models/deepseek-ocr", vllm_api_servers=8)
    argv = serve_argv(s, 8123, "/data/vllm_serve/chat_template.jinja")
    assert argv == [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", "/models/deepseek-ocr",
        "--served-model-name", "/models/deepseek-ocr", "--host", "127.0.0.1", "--port", "8123",
        "--api-server-count", "8",
        "--load-format", "auto", "--gpu-memory-utilization", "0.75", "--max-num-seqs", "256",
        "--max-model-len", "8192", "--max-num-batched-tokens", "16384",
        "--tensor-parallel-size", "1", "--data-parallel-size", "1",
        "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0.0", "--kv-cache-dtype", "auto",
        "--logits-processors", "engines.vllm_ngram:BatchedNGramLogitsProcessor",
        "--compilation-config", '{"cudagraph_mm_encoder": true}',
        "--chat-template", "/data/vllm_serve/chat_template.jinja", "--chat-template-content-format", "string",
        "--disable-uvicorn-access-log", "--middleware", "engines.vllm_served_by.ServedBy",
    ]  # fmt: skip
    # Every engine argument of the in-process engine is on it, but the renderer threads (the API servers replace them).
    for key, value in engine_args(s, "p").items():
        if key != "model" and key not in NOT_SERVE_FLAGS and not isinstance(value, bool):
            assert "--" + key.replace("_", "-") in argv, key


def test_serve_argv_follows_the_settings():
    s = Settings(_env_file=None, model_path="deepseek-ai/DeepSeek-OCR", vllm_api_servers=2, ngram_impl="vllm",
                 enforce_eager=True, kv_cache_dtype="fp8", tensor_parallel_size=2, data_parallel_size=4,
                 max_concurrency=256, gpu_mem_utilization=0.9, load_format="dummy", mm_cache_gb=2)  # fmt: skip
    argv = serve_argv(s, 9000, Path("/t/c.jinja"))
    assert flag(argv, "--api-server-count") == "2" and flag(argv, "--port") == "9000"
    assert flag(argv, "--logits-processors") == "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"
    assert "--enforce-eager" in argv and flag(argv, "--kv-cache-dtype") == "fp8"
    assert flag(argv, "--tensor-parallel-size") == "2" and flag(argv, "--data-parallel-size") == "4"
    assert flag(argv, "--max-num-seqs") == "256" and flag(argv, "--gpu-memory-utilization") == "0.9"
    assert flag(argv, "--load-format") == "dummy" and flag(argv, "--mm-processor-cache-gb") == "2.0"
    assert "--renderer-num-workers" not in argv
    graphs = serve_argv(Settings(_env_file=None, encoder_cudagraph=True), 1, "t")
    assert json.loads(flag(graphs, "--compilation-config")) == {"cudagraph_mm_encoder": True}  # JSON, as vLLM reads it
    assert "--enforce-eager" not in serve_argv(Settings(_env_file=None), 1, "t")


def test_serve_args_come_last_shell_split():
    s = Settings(_env_file=None, vllm_serve_args="--mm-tensor-ipc torch_shm --max-num-seqs 512 --x 'a b'")
    argv = serve_argv(s, 1, "t")
    assert argv[-6:] == ["--mm-tensor-ipc", "torch_shm", "--max-num-seqs", "512", "--x", "a b"]
    # argparse keeps the last value, so a flag given here overrides the derived one
    assert argv.index("--max-num-seqs") < len(argv) - 6


def test_serve_env_makes_the_repo_importable(monkeypatch, tmp_path):
    monkeypatch.setattr(vllm_serve_engine, "tuned_moe_folder", lambda: None)
    env = serve_env({"PYTHONPATH": "/opt/x", "HOME": "/root"})
    assert env["PYTHONPATH"] == f"{ROOT}{os.pathsep}/opt/x" and env["HOME"] == "/root"
    assert "VLLM_TUNED_CONFIG_FOLDER" not in env and serve_env({})["PYTHONPATH"] == str(ROOT)
    # idle lanes to the API processes stay open (vLLM closes idle connections after 5 s by default)
    assert int(env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) >= 3600
    assert serve_env({"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "9"})["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "9"
    monkeypatch.setattr(vllm_serve_engine, "tuned_moe_folder", lambda: str(tmp_path))
    assert serve_env({})["VLLM_TUNED_CONFIG_FOLDER"] == str(tmp_path)
    assert serve_env({"VLLM_TUNED_CONFIG_FOLDER": "/mine"})["VLLM_TUNED_CONFIG_FOLDER"] == "/mine"


def test_the_child_does_not_inherit_this_services_own_vllm_settings():
    """VLLM_SERVE_PORT and the like are this service's settings; vLLM warns of each unknown VLLM_* variable it finds."""
    assert {"VLLM_SERVE_PORT", "VLLM_API_SERVERS", "VLLM_INSTANCES"} <= vllm_serve_engine.OWN_VLLM_SETTINGS
    base = {"VLLM_SERVE_PORT": "18000", "vllm_api_servers": "4", "VLLM_TUNED_CONFIG_FOLDER": "/m", "HOME": "/root"}
    env = vllm_serve_engine.child_env(Settings(_env_file=None), base, {})
    assert "VLLM_SERVE_PORT" not in env and "vllm_api_servers" not in env
    assert env["VLLM_TUNED_CONFIG_FOLDER"] == "/m" and env["HOME"] == "/root"  # vLLM's own and the rest: kept
    assert "VLLM_SERVE_PORT" not in serve_env(base)  # the bench's own `vllm serve` (serve_compare) too


def test_the_chat_template_gives_vllm_the_in_process_prompt():
    """vLLM's "string" content format puts the image placeholder before the text part ("<image>\\n" + text);
    the template passes that on as the whole prompt, which must be what the in-process engine sends."""
    s = Settings(_env_file=None)
    engine = ManagedVLLMServeEngine(s)
    for prompt in ("document", "free", "Describe this image in detail."):
        req = pipeline.build_request(s, Image.new("RGB", (64, 64)), prompt, engine=engine)
        text = chat_body(req, "m", "data:,", stream=False)["messages"][0]["content"][1]["text"]
        content = "<image>\n" + text  # vLLM: placeholder, separator "\n", the text
        rendered = jinja2.Template(CHAT_TEMPLATE).render(messages=[{"role": "user", "content": content}])
        assert rendered == engine_prompt(req)["prompt"]


def test_factory_builds_the_managed_engine_for_vllm_api_servers(tmp_path):
    s = Settings(_env_file=None, engine="vllm", vllm_api_servers=4, max_concurrency=64)
    engine = build_engine(s)
    assert isinstance(engine, ManagedVLLMServeEngine) and engine.name == "vllm"
    assert engine.capacity() == 128 and engine.backends[0].limit == 128  # 2 x MAX_CONCURRENCY in flight
    assert "VLLM_API_SERVERS=4" in engine.selection_reason  # type: ignore[attr-defined]
    assert engine.modes == MODES
    assert isinstance(build_engine(Settings(_env_file=None, engine="vllm", vllm_api_servers=0)), VLLMEngine)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["DeepseekOCR2ForCausalLM"]}))
    ocr2 = ManagedVLLMServeEngine(Settings(_env_file=None, model_path=str(tmp_path), vllm_api_servers=1))
    assert ocr2.modes == OCR2_MODES and ocr2.token_strategy == "v2"


def test_instances_split_the_gpu_memory_the_sequences_and_the_api_servers():
    s = Settings(_env_file=None, gpu_mem_utilization=0.9, max_concurrency=256, vllm_api_servers=14, vllm_instances=2)
    one = instance_settings(s, 2)
    assert (one.gpu_mem_utilization, one.max_concurrency, one.vllm_api_servers) == (0.45, 128, 7)
    argv = serve_argv(one, 1, "t")
    assert flag(argv, "--gpu-memory-utilization") == "0.45" and flag(argv, "--max-num-seqs") == "128"
    assert flag(argv, "--api-server-count") == "7"
    three = instance_settings(Settings(_env_file=None, max_concurrency=100, vllm_api_servers=2), 3)
    assert three.max_concurrency == 34 and three.vllm_api_servers == 1  # at least one API server each
    assert instance_settings(s, 1) is s
    engine = ManagedVLLMServeEngine(s)
    assert engine.capacity() == 512 and [b.limit for b in engine.backends] == [256, 256]  # 2 x 256, split
    assert ManagedVLLMServeEngine(Settings(_env_file=None, vllm_api_servers=2)).backends[0].limit == 512


def test_mps_is_found_by_the_daemons_files(tmp_path):
    """As the daemon leaves its folder on an H100 host: control socket and pid file while it runs, the socket
    alone after it quit."""
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)}
    assert not mps_running(env)  # no daemon ever
    with socket.socket(socket.AF_UNIX) as control:
        control.bind(str(tmp_path / "control"))
        assert not mps_running(env)  # the socket it left when it quit
        (tmp_path / "nvidia-cuda-mps-control.pid").write_text("37\n")
        assert mps_running(env)
    assert not mps_running({"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "none")})


def test_api_servers_by_default_follow_the_cores():
    """VLLM_API_SERVERS=-1 (default): `vllm serve` with all cores but two as API servers (at most 16) on a
    machine with 4 or more cores, where it measured faster than vLLM in this process; in this process below."""
    auto = Settings(_env_file=None)
    assert auto.vllm_api_servers == -1
    assert [api_servers(auto, cores) for cores in (1, 2, 3, 4, 6, 16, 64)] == [0, 0, 0, 2, 4, 14, 16]
    assert api_servers(Settings(_env_file=None, vllm_api_servers=0), 64) == 0
    assert api_servers(Settings(_env_file=None, vllm_api_servers=3), 2) == 3
    argv = serve_argv(Settings(_env_file=None, vllm_api_servers=-1), 8000, "/tmp/t.jinja")
    assert argv[argv.index("--api-server-count") + 1] == str(max(1, api_servers(auto)))


def test_the_reason_of_an_exit_is_the_last_error_line_of_the_log(tmp_path):
    # The end of `vllm serve`'s log (vLLM 0.26, 4 API servers) after its EngineCore was killed on an H100.
    log = tmp_path / "serve.log"
    log.write_text(
        "WARNING 11-23 21:08:07 [utils.py:626] [shutdown] Process manager: force killing remaining processes count=4\n"
        "Traceback (most recent call last):\n"
        '  File "/tmp/site/vllm/v1/utils.py", line 576, in wait_for_completion_or_failure\n'
        "    raise RuntimeError(\n"
        "RuntimeError: Engine core process EngineCore died unexpectedly.\n"
        "/usr/lib/python3.12/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: There appear to "
        "be 1 leaked semaphore objects to clean up at shutdown\n"
        "  warnings.warn('resource_tracker: There appear to be %d '\n"
    )
    assert exit_line(log) == "RuntimeError: Engine core process EngineCore died unexpectedly."
    log.write_text("(EngineCore pid=7) ERROR 11-23 [core.py:1] CUDA error: an illegal memory access\nINFO: bye\n")
    assert exit_line(log) == "(EngineCore pid=7) ERROR 11-23 [core.py:1] CUDA error: an illegal memory access"
    log.write_text("INFO:     Started server process [1]\n\n")
    assert exit_line(log) == "INFO:     Started server process [1]"  # no error line: the last line
    assert exit_line(tmp_path / "missing.log") is None


# --- the lifecycle, with real processes ---------------------------------------------------------------


def processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                state, ppid, pgrp = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            out.append((int(entry), state, int(ppid), int(pgrp)))
    return out


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    return [pid for pid, state, _, pgrp in processes() if pgrp == pgid and state != "Z"]


def wait_group_gone(pgid: int, timeout: float = 10) -> None:
    deadline = time.time() + timeout
    while members := group_members(pgid):
        assert time.time() < deadline, f"processes of the child's group still alive: {members}"
        time.sleep(0.1)


def child_argv(port: int) -> list[str]:
    """This service on the CPU engine, with a sleeping process in its group (vLLM's other processes); each
    child its own DATA_DIR (VLLM_INSTANCES > 1 starts several)."""
    script = 'sleep 600 & DATA_DIR="$DATA_DIR/$1" exec "$0" -m uvicorn serve_ocr:app --host 127.0.0.1 --port "$1"'
    return ["sh", "-c", script, sys.executable, str(port)]


def slow_death_argv(port: int) -> list[str]:
    """As `vllm serve` when its EngineCore dies: the HTTP server goes first, the leader exits seconds later."""
    script = (
        'sleep 600 & "$0" -m uvicorn serve_ocr:app --host 127.0.0.1 --port "$1"; '
        'echo "RuntimeError: Engine core process EngineCore died unexpectedly."; sleep 2; exit 1'
    )
    return ["sh", "-c", script, sys.executable, str(port)]


@pytest.fixture
def managed(monkeypatch, tmp_path):
    """TestClients of the app on ENGINE=vllm, VLLM_API_SERVERS=1, whose child is this service (CPU engine)."""

    def make(argv=child_argv, warmup_pages: int = 0, instances: int = 1):
        child_env = {"ENGINE": "cpu", "NUM_WORKERS": "1", "DATA_DIR": str(tmp_path / "child"), "LOG_FORMAT": "text"}
        cls = functools.partial(ManagedVLLMServeEngine, argv=argv, env=child_env)
        monkeypatch.setattr(vllm_serve_engine, "ManagedVLLMServeEngine", cls)  # what the factory builds
        # The child is this service, which takes pages as data URLs only (vLLM reads page files: test_page_files);
        # its CPU engine reads a warm-up page in seconds, so the warm-up is asked for where it is tested.
        settings = Settings(_env_file=None, engine="vllm", vllm_api_servers=1, engine_death="stay", num_workers=1,
                            max_concurrency=2, remote_health_interval_s=0.5, data_dir=tmp_path / "front",
                            vllm_page_files=False, vllm_warmup_pages=warmup_pages,
                            vllm_instances=instances)  # fmt: skip
        return make_client(settings)

    return make


def kill_with_a_page_in_flight(client, child: str, victim: int, png: bytes):
    """SIGKILL `victim` while the child reads a page; the answer of that page."""
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.post, "/ocr/image/simple", files={"file": ("p.png", png)})
        deadline = time.time() + 30
        while httpx.get(f"{child}/").json()["engine"]["in_flight"] < 1:  # the page is in the child
            assert time.time() < deadline and not in_flight.done()
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        return in_flight.result(60)


def test_pages_go_through_the_managed_child_and_stop_leaves_no_process(managed, scan_png):
    with managed(warmup_pages=2) as client:
        saw_warming = False
        deadline = time.time() + 120
        while (ready := client.get("/ready")).status_code != 200:  # not ready until the warm-up pages are read
            saw_warming |= (ready.json().get("error") or "").startswith("warming up (2 pages")
            assert time.time() < deadline, ready.text
            time.sleep(0.05)
        info = client.get("/").json()["engine"]
        assert info["warmup"]["pages"] == 2 and info["warmup"]["failed"] == 0 and saw_warming
        assert httpx.get(f"http://127.0.0.1:{info['port']}/").json()["engine"]["completed"] == 2  # read by the child
        assert info["engine"] == "vllm" and info["shape"] == "vllm serve (managed)" and info["api_servers"] == 1
        assert "VLLM_API_SERVERS=1" in info["selected_because"] and info["max_concurrency"] == 4
        assert Path(info["log"]).is_file() and info["start_seconds"] is not None
        pid, child = info["pid"], f"http://127.0.0.1:{info['port']}"
        assert info["backends"][0]["url"] == child and info["backends"][0]["state"] == "up"
        assert pid in group_members(pid) and len(group_members(pid)) == 2  # the child and its stand-in
        r = client.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
        assert r.status_code == 200, r.text
        assert cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1
        assert httpx.get(f"{child}/").json()["engine"]["completed"] == 3  # the child's CPU engine read it
    wait_group_gone(pid)  # stop(): SIGTERM to the group, nothing left


def test_a_killed_child_is_the_engines_death(managed, pg9_png, scan_png):
    with managed() as client:
        wait_ready(client, timeout=120)
        info = client.get("/").json()["engine"]
        pid, child = info["pid"], f"http://127.0.0.1:{info['port']}"
        r = kill_with_a_page_in_flight(client, child, pid, pg9_png)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        assert "vllm serve exited with code -9" in r.json()["error"]["message"] and r.headers["retry-after"]
        wait_group_gone(pid)  # the child's exit killed the rest of its group at once
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["error"].startswith("vllm serve exited with code -9")
        r = client.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert "vllm serve exited with code -9" in r.json()["error"]["message"]
        url = "data:image/png;base64," + base64.b64encode(scan_png).decode()
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        v1 = client.post("/v1/chat/completions", json={"messages": msgs, "stream": True})
        assert v1.status_code == 503 and "vllm serve exited with code -9" in v1.json()["error"]["message"]
        time.sleep(1.2)  # health checks do not bring a dead child back
        assert client.get("/ready").status_code == 503 and client.get("/health").status_code == 200


def test_instances_take_turns_and_one_childs_death_stops_them_all(managed, pg9_png, scan_png):
    with managed(instances=2) as client:
        wait_ready(client, timeout=180)
        info = client.get("/").json()["engine"]
        children = info["children"]
        urls, pids = [c["url"] for c in children], [c["pid"] for c in children]
        assert info["instances"] == 2 and len(set(urls)) == 2 and len(set(pids)) == 2
        assert [b["url"] for b in info["backends"]] == urls and info["pid"] == pids[0]
        assert [Path(c["log"]).name for c in children] == ["serve.log", "serve2.log"]
        assert info["mps"] is False  # no MPS daemon here (a warning says so: the children take turns)
        for _ in range(4):
            r = client.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
            assert r.status_code == 200 and cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1, r.text
        assert [httpx.get(f"{u}/").json()["engine"]["completed"] for u in urls] == [2, 2]  # each child read two
        r = kill_with_a_page_in_flight(client, urls[0], pids[0], pg9_png)  # ties go to the first child
        assert r.status_code == 503 and "vllm serve 1 exited with code -9" in r.json()["error"]["message"], r.text
        for pid in pids:
            wait_group_gone(pid)  # the other child is stopped too: the engine is dead
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["error"].startswith("vllm serve 1 exited with code -9")


def test_a_child_whose_server_dies_before_it_exits(managed, pg9_png):
    """The page in flight fails at once, but its answer waits for the child's exit: 503 with the reason."""
    with managed(slow_death_argv) as client:
        wait_ready(client, timeout=120)
        info = client.get("/").json()["engine"]
        pid, child = info["pid"], f"http://127.0.0.1:{info['port']}"
        (server,) = [p for p, state, ppid, _ in processes() if ppid == pid and state != "Z" and p in group_members(pid)
                     and "uvicorn" in Path(f"/proc/{p}/cmdline").read_text()]  # fmt: skip
        t0 = time.time()
        r = kill_with_a_page_in_flight(client, child, server, pg9_png)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        why = "vllm serve exited with code 1: RuntimeError: Engine core process EngineCore died unexpectedly."
        assert why in r.json()["error"]["message"] and 1.5 < time.time() - t0 < 10
        assert client.get("/ready").json()["error"].startswith(why)
        wait_group_gone(pid)


def test_a_child_that_exits_or_never_answers_is_reported(tmp_path):
    async def start(argv, timeout: float) -> ManagedVLLMServeEngine:
        s = Settings(_env_file=None, vllm_api_servers=2, vllm_serve_start_timeout_s=timeout, data_dir=tmp_path)
        engine = ManagedVLLMServeEngine(s, argv=argv)
        await engine.start()
        wait_group_gone(engine.info()["pid"])  # start() itself leaves nothing behind
        await engine.stop()
        return engine

    crash = "import sys; print('CUDA out of memory', flush=True); sys.exit(3)"
    engine = asyncio.run(start(lambda port: [sys.executable, "-c", crash], 60))
    assert not engine.ready and engine.error.startswith("vllm serve could not start: exited with code 3")
    assert "CUDA out of memory" in engine.error
    assert (tmp_path / "vllm_serve" / "serve.log").read_text().strip() == "CUDA out of memory"

    engine = asyncio.run(start(lambda port: ["sh", "-c", "sleep 600 & exec sleep 600"], 1))
    assert not engine.ready and "VLLM_SERVE_START_TIMEOUT_S" in engine.error


def test_a_warm_up_holds_readiness_and_a_failing_or_hanging_one_does_not_block_it(monkeypatch, tmp_path):
    """The warm-up's logic (its pages through a real child: test_pages_go_through_the_managed_child_...)."""
    engine = ManagedVLLMServeEngine(Settings(_env_file=None, vllm_api_servers=2, data_dir=tmp_path))
    engine.backends[0].up = True
    seen: list = []

    async def some_fail(req):
        seen.append((req, engine.ready, engine.error))
        if len(seen) == 2:
            raise EngineUnavailable("the child dropped it")
        return OCRResult(text="", prompt_tokens=1, output_tokens=2, finish_reason="length")

    monkeypatch.setattr(engine, "_run", some_fail)
    asyncio.run(engine._warm_up(3))
    assert engine.warmup is not None and engine.warmup["pages"] == 3 and engine.warmup["failed"] == 1
    assert engine.ready and engine.error is None  # ready again once it is done
    assert all(not ready and error.startswith("warming up (64 pages") for _, ready, error in seen)
    assert all(r.image.size == (1240, 1754) and r.max_tokens == 2 and r.ignore_eos for r, _, _ in seen)
    assert {r.mode.name for r, _, _ in seen} == {engine.default_mode()}
    sent, _, source = load_page(seen[0][0].source[1], 60_000_000)  # each goes as a user's PNG upload would
    assert source == seen[0][0].source and sent.tobytes() == seen[0][0].image.tobytes()

    async def hang(req):
        await asyncio.sleep(30)

    monkeypatch.setattr(engine, "_run", hang)
    monkeypatch.setattr(vllm_serve_engine, "WARMUP_TIMEOUT_S", 0.2)
    t0 = time.monotonic()
    asyncio.run(engine._warm_up(3))
    assert time.monotonic() - t0 < 5 and engine.warmup["failed"] == 3 and engine.ready
