"""Lanes (engines/api_lanes.py): connections to a server whose worker processes share one socket, each known
by the process that answers on it (engines/vllm_served_by.py), pages sent to the least busy process.

A real uvicorn with three worker processes on one socket stands in for `vllm serve --api-server-count 3`
(the same accept race), and the managed engine's test runs this service itself as a two-worker child.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import OCR_TEST_TEXT, cer, make_client, wait_ready
from lanes_app import plain

from config import Settings
from engines import vllm_serve_engine
from engines.api_lanes import Lanes
from engines.vllm_serve_engine import ManagedVLLMServeEngine, free_port
from engines.vllm_served_by import SERVED_BY, ServedBy

HERE = Path(__file__).resolve().parent


def client_factory(**kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=30, **kw)


@pytest.fixture(scope="module")
def three_workers() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "lanes_app:app", "--app-dir", str(HERE), "--workers", "3",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=HERE.parent,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline, seen = time.time() + 60, set()
    while len(seen) < 3:  # up once all three have answered (each GET on a new connection)
        try:
            seen.add(httpx.get(f"{base}/health", timeout=2).headers[SERVED_BY])
        except (httpx.HTTPError, KeyError):
            time.sleep(0.1)
        assert proc.poll() is None and time.time() < deadline, f"uvicorn --workers 3: {len(seen)} answered"
    yield base
    proc.terminate()
    proc.wait(30)


def test_every_answer_names_its_process():
    async def go():
        transport = httpx.ASGITransport(app=ServedBy(plain))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get("/health"), await c.post("/work?s=0")

    for r in asyncio.run(go()):
        assert r.status_code == 200 and r.headers[SERVED_BY] == str(os.getpid())


def test_pages_go_to_the_least_busy_process(three_workers):
    async def go():
        lanes = Lanes(client_factory)
        have = await lanes.warm(f"{three_workers}/health", servers=3, per_server=4)

        async def one() -> str:
            async with lanes.take() as c:
                r = await c.post(f"{three_workers}/work?s=0.3")
                assert r.json()["pid"] == int(r.headers[SERVED_BY])
                return r.headers[SERVED_BY]

        served = await asyncio.gather(*(one() for _ in range(12)))
        after = lanes.counts(), dict(lanes.in_flight), lanes.info()
        await lanes.aclose()
        return have, served, after

    have, served, (counts, in_flight, info) = asyncio.run(go())
    assert len(have) == 3 and sorted(have.values()) == [4, 4, 4]  # every worker holds its share
    assert sorted(Counter(served).values()) == [4, 4, 4]  # 12 pages at once: 4 on each worker
    assert set(Counter(served)) == set(have)
    assert counts == have and not any(in_flight.values())  # every lane back, idle, under its worker
    assert info["lanes"] == {k: 4 for k in have} and info["in_flight"] == {}


def test_busy_processes_get_no_new_pages_until_others_catch_up(three_workers):
    async def go():
        lanes = Lanes(client_factory)
        await lanes.warm(f"{three_workers}/health", servers=3, per_server=3)

        async def one(s: float) -> str:
            async with lanes.take() as c:
                return (await c.post(f"{three_workers}/work?s={s}")).headers[SERVED_BY]

        slow = [asyncio.create_task(one(1.0)) for _ in range(3)]  # one long page on each worker
        await asyncio.sleep(0.1)
        quick = await asyncio.gather(*(one(0) for _ in range(6)))  # each worker has one in flight: 2 more each
        await asyncio.gather(*slow)
        await lanes.aclose()
        return quick

    assert sorted(Counter(asyncio.run(go())).values()) == [2, 2, 2]


def test_a_server_that_names_no_process_gets_lanes_as_pages_need_them():
    async def go():
        lanes = Lanes(functools.partial(client_factory, transport=httpx.ASGITransport(app=plain)))
        have = await lanes.warm("http://t/health", servers=3, per_server=4)  # stops after one wave
        async with lanes.take() as c:
            r = await c.post("http://t/work?s=0")
        return have, r.status_code, lanes.info()

    have, status, info = asyncio.run(go())
    assert have == {} and status == 200 and info["lanes"] == {"None": 1}


def two_worker_child(port: int) -> list[str]:
    """This service (CPU engine) as the managed child, two uvicorn workers on one socket, answers named."""
    return [sys.executable, "-m", "uvicorn", "--factory", "lanes_app:served_ocr", "--app-dir", str(HERE),
            "--workers", "2", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def test_the_managed_child_gets_pages_on_each_api_process(monkeypatch, tmp_path, scan_png):
    child_env = {"ENGINE": "cpu", "NUM_WORKERS": "1", "DATA_DIR": str(tmp_path / "child"), "LOG_FORMAT": "text"}
    cls = functools.partial(ManagedVLLMServeEngine, argv=two_worker_child, env=child_env)
    monkeypatch.setattr(vllm_serve_engine, "ManagedVLLMServeEngine", cls)
    settings = Settings(_env_file=None, engine="vllm", vllm_api_servers=2, num_workers=2, max_concurrency=2,
                        engine_death="stay", data_dir=tmp_path / "front", vllm_page_files=False,
                        vllm_warmup_pages=0)  # fmt: skip
    with make_client(settings) as client:
        wait_ready(client, timeout=180)
        lanes = client.get("/").json()["engine"]["api_processes"]["lanes"]
        assert len(lanes) == 2 and sorted(lanes.values()) == [2, 2]  # capacity 4 = 2 lanes on each worker
        r = client.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
        assert r.status_code == 200, r.text
        assert cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1
