"""ENGINE=remote against real service processes on loopback.

The fleet: a CPU-engine backend, and a remote-engine front whose REMOTE_URLS list the backend plus one
dead URL (nothing listens there). Images, PDFs (with layouts PDF and crops), batches, jobs and /v1 through
the front give the backend's own answers; the dead URL is marked down; killing the backend turns the front
into 503 engine_unavailable, and restarting it puts it back. Balancing and the retry on another backend
run on an in-process front (one backend listed twice; a backend that answers 5xx). A recording backend shows
what travels: an upright RGB PNG or JPEG upload byte for byte, any other page re-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import socket
import time
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import httpx
import openai
import pytest
from conftest import DOCLING, OCR_TEST_TEXT, cer, cut_inside, make_client, render, serve_http, wait_ready
from PIL import Image
from service import start_service, stop_service

import pipeline
from config import Settings
from deepseek_ocr import EngineUnavailable
from engines.remote_engine import TEXT_TOKENS_MARGIN, Backend, RemoteEngine, chat_body, error_of, output_budget


def free_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def backend_env(data_dir: Path) -> dict[str, str]:
    return {"ENGINE": "cpu", "NUM_WORKERS": "1", "DATA_DIR": str(data_dir)}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    backend_proc, backend = start_service(backend_env(tmp / "backend"), log=tmp / "backend.log")
    dead = free_url()
    env = {
        "ENGINE": "remote",
        "REMOTE_URLS": f"{backend}/v1, {dead}",  # a /v1 suffix is accepted
        "REMOTE_HEALTH_INTERVAL_S": "0.5",
        "REMOTE_CONCURRENCY": "2",
        "NUM_WORKERS": "1",
        "DATA_DIR": str(tmp / "front"),
    }
    try:
        front_proc, front = start_service(env, log=tmp / "front.log")
    except Exception:
        stop_service(backend_proc)
        raise
    f = {"backend": backend, "dead": dead, "front": front, "procs": [backend_proc, front_proc], "tmp": tmp}
    yield f
    for p in f["procs"]:
        stop_service(p, grace=10)


def backends_of(front: str) -> dict[str, dict]:
    return {b["url"]: b for b in httpx.get(f"{front}/", timeout=10).json()["engine"]["backends"]}


def post(base: str, route: str, **kw) -> httpx.Response:
    return httpx.post(f"{base}{route}", timeout=300, **kw)


def test_front_is_ready_and_the_dead_backend_is_down(fleet):
    assert httpx.get(f"{fleet['front']}/ready").status_code == 200
    engine = httpx.get(f"{fleet['front']}/").json()["engine"]
    assert engine["engine"] == "remote" and engine["max_concurrency"] == 4  # 2 backends x REMOTE_CONCURRENCY
    backends = backends_of(fleet["front"])
    live, dead = backends[fleet["backend"]], backends[fleet["dead"]]
    assert live["state"] == "up" and live["model"] == engine["model_name"]
    assert dead["state"] == "down" and "ConnectError" in dead["last_error"]
    models = httpx.get(f"{fleet['backend']}/v1/models").json()["data"]
    assert engine["model_name"] == models[0]["id"]  # the front learnt the model name from the backend


def test_images_through_the_front_match_the_backend(fleet, pg9_png, scan_png):
    for png, prompt in ((pg9_png, "document"), (scan_png, "ocr")):
        files, data = {"file": ("p.png", png)}, {"prompt": prompt, "crop_labels": "all"}
        direct = post(fleet["backend"], "/ocr/image/advanced", files=files, data=data).json()
        via = post(fleet["front"], "/ocr/image/advanced", files=files, data=data)
        assert via.status_code == 200, via.text
        via = via.json()
        assert via["engine"] == "remote" and via["raw_output"] == direct["raw_output"] and via["raw_output"]
        assert via["regions"] == direct["regions"] and len(via["crops"]) == len(direct["crops"])
    simple = post(fleet["front"], "/ocr/image/simple", files={"file": ("s.png", scan_png)}).json()
    assert cer(simple["text"], OCR_TEST_TEXT) <= 0.1
    assert backends_of(fleet["front"])[fleet["dead"]]["completed"] == 0


def test_pdf_batch_and_job_through_the_front_match_the_backend(fleet, scan_png):
    pdf = (DOCLING / "multi_page.pdf").read_bytes()
    form = {"draw_layouts": "true", "pages": "1-2"}
    direct = post(fleet["backend"], "/pdf/ocr", files={"file": ("m.pdf", pdf)}, data=form).json()
    via = post(fleet["front"], "/pdf/ocr", files={"file": ("m.pdf", pdf)}, data=form).json()
    assert [p["raw_output"] for p in via["pages"]] == [p["raw_output"] for p in direct["pages"]]
    assert len(via["pages"]) == 2 and via["layouts_pdf"] and via["markdown"] == direct["markdown"]

    files = [("files", ("o.pdf", (DOCLING / "ocr_test.pdf").read_bytes())), ("files", ("s.png", scan_png))]
    z = zipfile.ZipFile(io.BytesIO(post(fleet["front"], "/batch/ocr/download", files=files).content))
    assert {"o/o.md", "o/o_layouts.pdf", "s/s.md", "results.json"} <= set(z.namelist())
    assert cer(z.read("o/o.md").decode(), OCR_TEST_TEXT) <= 0.1

    job = post(fleet["front"], "/jobs", files=[("files", ("m.pdf", pdf))], data={"pages": "1-2"}).json()
    deadline = time.time() + 300
    while (state := httpx.get(f"{fleet['front']}/jobs/{job['job_id']}").json())["state"] not in ("done", "failed"):
        assert time.time() < deadline, state
        time.sleep(0.3)
    assert state["state"] == "done", state
    result = httpx.get(f"{fleet['front']}/jobs/{job['job_id']}/result").json()
    assert [p["text"] for p in result["files"][0]["pages"]] == [p["text"] for p in direct["pages"]]


def test_openai_clients_through_the_front(fleet, scan_png):
    url = "data:image/png;base64," + base64.b64encode(scan_png).decode()
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "ocr"}]
    msgs = [{"role": "user", "content": parts}]
    extra = {"skip_special_tokens": False}
    direct = openai.OpenAI(base_url=f"{fleet['backend']}/v1", api_key="-", max_retries=0)
    front = openai.OpenAI(base_url=f"{fleet['front']}/v1", api_key="-", max_retries=0)
    want = direct.chat.completions.create(model="m", messages=msgs, extra_body=extra).choices[0].message.content
    got = front.chat.completions.create(model="m", messages=msgs, extra_body=extra)
    assert got.choices[0].message.content == want and "<|det|>" in want
    chunks = list(front.chat.completions.create(model="m", messages=msgs, extra_body=extra, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    # The backend's 4xx reaches the client through the front, with its code.
    describe = [{"role": "user", "content": [msgs[0]["content"][0], {"type": "text", "text": "describe"}]}]
    for stream in (False, True):
        with pytest.raises(openai.UnprocessableEntityError) as e:
            front.chat.completions.create(model="m", messages=describe, stream=stream)
        assert e.value.code == "prompt_not_supported"


def test_a_backend_marked_down_names_itself_before_the_engine_has_noticed():
    """A health check marks backends down before it updates the engine's error: a page taken in between gets
    the backends' reasons, not a bare "no backend is up"."""
    engine = RemoteEngine(Settings(_env_file=None, engine="remote", remote_urls=["http://127.0.0.1:9"]))
    engine.backends[0].last_error = "health check: ConnectError: refused"
    assert engine.error is None and not engine.backends[0].up
    with pytest.raises(EngineUnavailable) as e:
        asyncio.run(engine._acquire([]))
    assert str(e.value) == "no backend is up: http://127.0.0.1:9: health check: ConnectError: refused"


def test_killed_backend_gives_503_and_the_health_check_brings_it_back(fleet, scan_png):
    front, backend = fleet["front"], fleet["backend"]
    proc = fleet["procs"][0]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t_kill = time.time()
    r = post(front, "/ocr/image/simple", files={"file": ("s.png", scan_png)})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
    assert backend in r.json()["error"]["message"] and r.headers["retry-after"]
    v1 = post(front, "/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(scan_png).decode()}}
    ]}]})  # fmt: skip
    assert v1.status_code == 503 and v1.json()["error"]["type"] == "server_error"
    ready = httpx.get(f"{front}/ready")
    assert ready.status_code == 503 and "no backend is up" in ready.json()["error"]
    t_503 = time.time()

    fleet["procs"][0], _ = start_service(backend_env(fleet["tmp"] / "backend"), base=backend)
    t_restarted = time.time()
    deadline = time.time() + 60
    while httpx.get(f"{front}/ready").status_code != 200:
        assert time.time() < deadline, backends_of(front)
        time.sleep(0.1)
    t_back = time.time()
    r = post(front, "/ocr/image/simple", files={"file": ("s.png", scan_png)})
    assert r.status_code == 200 and cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1
    assert backends_of(front)[backend]["state"] == "up"
    figures = {"kill_to_503_s": t_503 - t_kill, "backend_ready_to_front_ready_s": t_back - t_restarted}
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}))


# --- what goes over the wire (no servers) -----------------------------------------------------------


def test_chat_body_is_the_recipe_request(scan_png):
    from process.image_process import load_image

    settings = Settings(_env_file=None)
    image, _ = load_image(scan_png, settings.max_image_pixels)
    engine = RemoteEngine(Settings(_env_file=None, engine="remote", remote_urls=["http://gpu1:8001"]))
    req = pipeline.build_request(settings, image, "free", engine=engine, max_tokens=100)
    body = chat_body(req, "deepseek-ai/DeepSeek-OCR", "data:image/png;base64,AAAA", stream=False)
    image_part, text_part = body["messages"][0]["content"]
    assert image_part == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert text_part == {"type": "text", "text": "Free OCR."}  # the server adds the <image> placeholder
    assert body["skip_special_tokens"] is False and body["max_tokens"] == 100 and body["temperature"] == 0.0
    assert body["vllm_xargs"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
    assert body["mm_processor_kwargs"] == {"base_size": 1024, "image_size": 640, "crop_mode": True}  # Gundam
    assert "stream_options" not in body
    req = pipeline.build_request(settings, image, "document", engine=engine, mode="large", ngram_size=0)
    body = chat_body(req, "m", "data:,", stream=True)
    assert body["messages"][0]["content"][1]["text"] == "<|grounding|>Convert the document to markdown."
    assert body["mm_processor_kwargs"] == {"base_size": 1280, "image_size": 1280, "crop_mode": False}
    assert "vllm_xargs" not in body and body["stream_options"] == {"include_usage": True}
    # `vllm serve` refuses prompt + max_tokens > its context (400): asking for about the whole rest of the
    # context leaves max_tokens out, so the server fills the rest itself, as vLLM in process would.
    whole = pipeline.build_request(settings, image, "free", engine=engine)  # MAX_TOKENS 8192 = MAX_MODEL_LEN
    assert output_budget(whole, 8192) is None and "max_tokens" not in chat_body(
        whole, "m", "", stream=False, max_model_len=8192
    )
    assert output_budget(whole, None) == 8192 and output_budget(whole, 32768) == 8192
    fits = 8192 - whole.plan.image_tokens - TEXT_TOKENS_MARGIN
    assert output_budget(pipeline.build_request(settings, image, "free", engine=engine, max_tokens=fits), 8192) == fits
    assert (
        output_budget(pipeline.build_request(settings, image, "free", engine=engine, max_tokens=fits + 1), 8192) is None
    )
    # A `vllm serve` backend gets the mode too: with this service's plugin it runs every mode.
    vllm_body = engine._body(Backend("http://gpu1:8001", 1, up=True, owned_by="vllm"), req, "data:,", stream=False)
    assert vllm_body["mm_processor_kwargs"] == {"base_size": 1280, "image_size": 1280, "crop_mode": False}


def test_backend_errors_in_every_shape():
    assert error_of(b'{"error": {"message": "bad", "type": "BadRequestError", "code": 400}}', 400)[:2] == (
        "bad",
        "backend_rejected",
    )  # vLLM
    assert error_of(b'{"object": "error", "message": "old", "code": 400}', 400)[0] == "old"  # older vLLM
    assert error_of(b'{"error": {"code": "bad_mode", "message": "m", "accepted": ["gundam"]}}', 422) == (
        "m",
        "bad_mode",
        ["gundam"],
    )  # this service
    assert error_of(b"<html>502 Bad Gateway</html>", 502)[0].startswith("<html>")


def test_remote_urls_setting():
    s = Settings(_env_file=None, remote_urls="http://a:8001/v1/, https://b:8001")
    assert s.remote_urls == ["http://a:8001", "https://b:8001"]
    with pytest.raises(ValueError, match="REMOTE_URLS"):
        Settings(_env_file=None, remote_urls="gpu1:8001")


# --- in-process fronts: balancing and the retry on another backend ------------------------------------


class FakeBackend(BaseHTTPRequestHandler):
    """A backend that passes health checks (model `model`); subclasses answer the pages."""

    model = "fake"

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json(200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def log_message(self, *args):
        pass


class FailingBackend(FakeBackend):
    """A backend that passes health checks but answers every page with HTTP 500."""

    model = "broken"
    chat_requests = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).chat_requests += 1
        self._json(500, {"error": {"message": "out of memory", "type": "server_error", "code": "internal_error"}})


def test_balancing_and_retry_on_another_backend(fleet, tmp_path, scan_png):
    backend = fleet["backend"]
    if fleet["procs"][0].poll() is not None:
        pytest.skip("backend not running")
    # One backend listed twice: pages alternate between the two entries (fewest outstanding, then least used).
    s = Settings(_env_file=None, engine="remote", remote_urls=[backend, backend], data_dir=tmp_path / "a")
    with make_client(s) as c:
        wait_ready(c)
        for _ in range(4):
            assert c.post("/ocr/image/simple", files={"file": ("s.png", scan_png)}).status_code == 200
        assert [b["completed"] for b in c.get("/").json()["engine"]["backends"]] == [2, 2]

    with serve_http(FailingBackend) as broken:
        s = Settings(_env_file=None, engine="remote", remote_urls=[broken, backend], data_dir=tmp_path / "b")
        with make_client(s) as c:
            wait_ready(c)
            for _ in range(4):
                r = c.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
                assert r.status_code == 200 and cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1
            state = {b["url"]: b for b in c.get("/").json()["engine"]["backends"]}
    assert FailingBackend.chat_requests >= 1  # some pages went to the broken backend first...
    assert state[broken]["failures"] == FailingBackend.chat_requests and "out of memory" in state[broken]["last_error"]
    assert state[backend]["completed"] == 4  # ...and were retried on the other one
    assert state[broken]["state"] == "up"  # a 5xx does not take a backend out (a poison page would take all out)


def test_a_corrupt_upload_sent_on_undecoded_is_answered_as_corrupt(fleet, tmp_path, scan_png):
    """The front sends an upright RGB PNG on without decoding it (lazy_pages). When the backend refuses (4xx) or
    fails on (5xx) such a page, the front decodes it: a corrupt file is the answer, in the front's own words."""
    bad = cut_inside(scan_png)  # header and framing whole, pixels corrupt
    r = post(fleet["front"], "/ocr/image/simple", files={"file": ("bad.png", bad)})
    err = r.json()["error"]
    assert r.status_code == 422 and err["code"] == "corrupt_image"
    assert err["message"].startswith("the image could not be decoded")  # not "the OCR backend refused the page"
    assert post(fleet["front"], "/ocr/image/simple", files={"file": ("s.png", scan_png)}).status_code == 200

    FailingBackend.chat_requests = 0
    with serve_http(FailingBackend) as broken:
        s = Settings(_env_file=None, engine="remote", remote_urls=[broken], data_dir=tmp_path)
        with make_client(s) as c:
            wait_ready(c)
            part = {
                "type": "image_url",
                "image_url": {"url": f"data:image/png;base64,{base64.b64encode(bad).decode()}"},
            }
            v1 = {"messages": [{"role": "user", "content": [part]}]}
            answers = [
                c.post("/ocr/image/simple", files={"file": ("bad.png", bad)}),
                c.post("/v1/chat/completions", json={**v1, "stream": True}),
            ]
            whole = c.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
    for r in answers:  # the page is at fault, not the backend: no 502
        assert r.status_code == 422 and "could not be decoded" in r.text, r.text
    assert FailingBackend.chat_requests >= 2  # both went to the backend undecoded first
    assert whole.status_code == 502  # a whole page on a failing backend is still the backend's failure


# --- what the backend receives: the uploaded file itself, or the page re-encoded -----------------------


class RecordingBackend(FakeBackend):
    """A backend that keeps the image URL (and max_tokens) of every page it gets and answers "ok" (streamed if
    asked). Its model card gives its context length, as vLLM's does."""

    urls: ClassVar[list[str]] = []
    max_tokens: ClassVar[list[int | None]] = []

    def do_GET(self):
        self._json(200, {"object": "list", "data": [{"id": self.model, "object": "model", "max_model_len": 8192}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        type(self).urls.append(body["messages"][0]["content"][0]["image_url"]["url"])
        type(self).max_tokens.append(body.get("max_tokens"))
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            self._json(200, {"choices": [choice], "usage": usage})
            return
        self.send_response(200)  # HTTP/1.0: the stream ends when the connection closes
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for event in (
            {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage},
        ):
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def recording_front(tmp_path):
    """(client, the URLs its backend got) of an in-process remote front whose one backend records pages."""
    RecordingBackend.urls, RecordingBackend.max_tokens = [], []
    with serve_http(RecordingBackend) as backend:
        s = Settings(_env_file=None, engine="remote", remote_urls=[backend], data_dir=tmp_path)
        with make_client(s) as c:
            wait_ready(c)
            yield c, RecordingBackend.urls


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def decoded(url: str) -> tuple[str, bytes]:
    """(MIME type, bytes) of a base64 data URL."""
    head, data = url.split(",", 1)
    return head.removeprefix("data:").removesuffix(";base64"), base64.b64decode(data)


def test_rgb_png_and_jpeg_reach_the_backend_as_uploaded(recording_front, scan_png):
    c, urls = recording_front
    jpeg = (DOCLING / "qr_bill_example.jpg").read_bytes()  # RGB, EXIF orientation 1
    for data, mime in ((scan_png, "image/png"), (jpeg, "image/jpeg")):
        b64 = base64.b64encode(data).decode()
        urls.clear()
        assert c.post("/ocr/image/simple", files={"file": ("p", data)}).status_code == 200
        advanced = c.post("/ocr/image/advanced", files={"file": ("p", data)}).json()
        assert set(advanced["input"]) == {"format", "frames", "width", "height"}  # the same info as before
        assert c.post("/batch/ocr", files=[("files", ("p.img", data))]).json()["succeeded"] == 1  # documents.py
        assert c.post("/generate", json={"image_base64": b64, "stream": True}).text.endswith("[DONE]\n\n")
        part = {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64}"}}
        v1 = {"messages": [{"role": "user", "content": [part]}]}
        for stream in (False, True):
            assert c.post("/v1/chat/completions", json={**v1, "stream": stream}).status_code == 200
        assert len(urls) == 6 and all(decoded(u) == (mime, data) for u in urls)  # byte for byte the upload


def test_other_pages_reach_the_backend_re_encoded(recording_front):
    c, urls = recording_front
    page = Image.new("RGB", (300, 200), "white")
    page.paste((200, 0, 0), (0, 0, 60, 40))  # a red corner shows which way up the page arrived
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown turned 90 degrees clockwise
    rgba = (DOCLING / "example_image_01.png").read_bytes()  # RGBA
    uploads = {
        "rgba": (rgba, Image.open(io.BytesIO(rgba)).convert("RGBA")),
        "gray": (encode(page.convert("L"), "PNG"), page.convert("L").convert("RGB")),
        "exif": (encode(page, "JPEG", exif=exif, quality=100), None),
    }
    for name, (data, want) in uploads.items():
        urls.clear()
        r = c.post("/ocr/image/simple", files={"file": (name, data)})
        assert r.status_code == 200, r.text
        mime, sent = decoded(urls[0])
        got = Image.open(io.BytesIO(sent))
        assert mime == "image/png" and sent != data and got.mode == "RGB", name
        if name == "rgba":  # transparent areas become white paper
            flat = Image.new("RGB", want.size, "white")
            flat.paste(want, mask=want.getchannel("A"))
            assert got.tobytes() == flat.tobytes()
        elif name == "gray":
            assert got.tobytes() == want.tobytes()
        else:  # upright: sides swapped, the red corner now top right
            assert got.size == (200, 300)
            assert got.getpixel((190, 10))[0] > 150 and got.getpixel((10, 10)) == (255, 255, 255)

    urls.clear()
    pdf = (DOCLING / "ocr_test.pdf").read_bytes()
    assert c.post("/pdf/ocr", files={"file": ("o.pdf", pdf)}).status_code == 200
    mime, sent = decoded(urls[0])
    rendered = Image.open(io.BytesIO(render("ocr_test.pdf")))  # the default 144 dpi
    assert len(urls) == 1 and mime == "image/png" and Image.open(io.BytesIO(sent)).size == rendered.size


def test_pages_asking_for_the_whole_context_fit_the_backend(recording_front, scan_png):
    """MAX_TOKENS (8192) = the backend's context (8192, from its model card): no max_tokens goes out (vLLM
    would refuse the page with a 400), a smaller ask goes out as is."""
    c, _ = recording_front
    assert c.post("/ocr/image/simple", files={"file": ("s.png", scan_png)}).status_code == 200
    assert c.post("/invocations", json={"image_base64": base64.b64encode(scan_png).decode()}).status_code == 200
    assert (
        c.post("/ocr/image/advanced", files={"file": ("s.png", scan_png)}, data={"max_tokens": 50}).status_code == 200
    )
    assert RecordingBackend.max_tokens == [None, None, 50]
