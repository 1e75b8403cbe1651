"""/v1 (OpenAI-compatible) with the real `openai` package as the client, against a real server on loopback.

CPU engine; the recipe's request shape (image_url + text parts, extra_body with skip_special_tokens and
vllm_xargs), streaming, usage, resolution modes, image URLs under the SSRF rules, errors in OpenAI's shape.
"""

from __future__ import annotations

import base64
from http.server import BaseHTTPRequestHandler

import httpx
import openai
import pytest
from conftest import OCR_TEST_TEXT, cer, render, serve_http
from service import start_service, stop_service

SCAN = render("ocr_test.pdf")
RECIPE = {"skip_special_tokens": False, "vllm_xargs": {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [1]}}


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def messages(url: str, text: str | None = "Free OCR.") -> list[dict]:
    content: list[dict] = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return [{"role": "system", "content": "You are an OCR engine."}, {"role": "user", "content": content}]


class Pages(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/scan.png" else 404)
        self.send_header("Content-Length", str(len(SCAN) if self.path == "/scan.png" else 0))
        self.end_headers()
        if self.path == "/scan.png":
            self.wfile.write(SCAN)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def page_server():
    with serve_http(Pages) as url:
        yield url


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    # 127.0.0.1 only may be fetched (as an operator would allow an internal network); other private hosts not.
    env = {"ENGINE": "cpu", "NUM_WORKERS": "1", "URL_ALLOW_NETWORKS": "127.0.0.1/32"}
    proc, url = start_service({**env, "DATA_DIR": str(tmp_path_factory.mktemp("v1"))})
    yield url
    stop_service(proc)


@pytest.fixture(scope="module")
def oa(base) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_served_model(oa, base):
    models = oa.models.list().data
    engine = httpx.get(f"{base}/").json()["engine"]
    assert [m.id for m in models] == [engine["model_name"]] and models[0].owned_by


def test_recipe_request_reads_the_page(oa):
    r = oa.chat.completions.create(
        model="deepseek-ai/DeepSeek-OCR", messages=messages(data_url(SCAN)), max_tokens=2048, temperature=0.0,
        extra_body=RECIPE,
    )  # fmt: skip
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert cer(choice.message.content, OCR_TEST_TEXT) <= 0.1
    u = r.usage
    assert u.completion_tokens > 0 and u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_grounding_tokens_kept_only_when_asked(oa):
    kept = oa.chat.completions.create(
        model="m", messages=messages(data_url(SCAN), "document"), extra_body={"skip_special_tokens": False}
    )
    content = kept.choices[0].message.content
    assert "<|ref|>" in content and "<|det|>" in content
    skipped = oa.chat.completions.create(model="m", messages=messages(data_url(SCAN), "document"))
    text = skipped.choices[0].message.content
    assert "<|" not in text and cer(text, content.replace("<|ref|>", "").replace("<|/ref|>", "")) < 0.5


def test_streaming_chunks_usage_and_done(oa, base):
    whole = oa.chat.completions.create(model="m", messages=messages(data_url(SCAN)), extra_body=RECIPE)
    chunks = list(
        oa.chat.completions.create(
            model="m", messages=messages(data_url(SCAN)), stream=True, stream_options={"include_usage": True},
            extra_body=RECIPE,
        )
    )  # fmt: skip
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # The wire format itself: SSE events, [DONE] last.
    body = {"messages": messages(data_url(SCAN)), "stream": True}
    raw = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]") and raw.text.startswith("data: {")


def test_max_tokens_and_modes(oa):
    short = oa.chat.completions.create(model="m", messages=messages(data_url(SCAN)), max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    gundam = oa.chat.completions.create(model="m", messages=messages(data_url(SCAN)), max_tokens=3)
    by_kwargs = oa.chat.completions.create(
        model="m", messages=messages(data_url(SCAN)), max_tokens=3,
        extra_body={"mm_processor_kwargs": {"base_size": 1280, "image_size": 1280, "crop_mode": False}},
    )  # fmt: skip
    by_name = oa.chat.completions.create(
        model="m", messages=messages(data_url(SCAN)), max_tokens=3, extra_body={"mode": "large"}
    )
    # The prompt's image-token count follows the mode (large: 1280 px, no tiles).
    assert by_kwargs.usage.prompt_tokens == by_name.usage.prompt_tokens != gundam.usage.prompt_tokens


def test_image_urls_fetched_under_the_url_rules(oa, page_server):
    ok = oa.chat.completions.create(model="m", messages=messages(f"{page_server}/scan.png"))
    assert cer(ok.choices[0].message.content, OCR_TEST_TEXT) <= 0.1
    for url, code in [
        ("http://10.0.0.1/scan.png", "url_not_allowed"),
        ("http://169.254.169.254/latest/meta-data", "url_not_allowed"),
        ("file:///etc/passwd", "bad_url_scheme"),
        (f"{page_server}/missing.png", "url_fetch_failed"),
        ("data:image/png;base64,@@@not-base64", "bad_base64"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            oa.chat.completions.create(model="m", messages=messages(url))
        assert e.value.code == code, url


def error(r: httpx.Response) -> dict:
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    return err


def test_errors_in_openai_shape(oa, base):
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "no image here"}])
    assert e.value.code == "need_one_image" and "exactly one image_url" in e.value.message
    two = messages(data_url(SCAN))
    two[1]["content"].append({"type": "image_url", "image_url": {"url": data_url(SCAN)}})
    with pytest.raises(openai.BadRequestError):
        oa.chat.completions.create(model="m", messages=two)
    for stream in (False, True):  # a stream that cannot start answers with a status, not a 200 + error event
        with pytest.raises(openai.UnprocessableEntityError) as e:
            oa.chat.completions.create(model="m", messages=messages(data_url(SCAN), "describe"), stream=stream)
        assert e.value.code == "prompt_not_supported" and "vllm" in e.value.message
    with pytest.raises(openai.UnprocessableEntityError) as e:
        oa.chat.completions.create(model="m", messages=messages(data_url(SCAN)), extra_body={"mode": "huge"})
    assert e.value.code == "bad_mode"
    url = f"{base}/v1/chat/completions"
    bad_kwargs = {"messages": messages(data_url(SCAN)), "mm_processor_kwargs": {"base_size": 777}}
    assert error(httpx.post(url, json=bad_kwargs, timeout=60))["code"] == "bad_mode"
    large = {"base_size": 1280, "image_size": 1280, "crop_mode": False}
    conflict = {"messages": messages(data_url(SCAN)), "mode": "tiny", "mm_processor_kwargs": large}
    assert error(httpx.post(url, json=conflict, timeout=60))["code"] == "conflicting_mode"
    err = error(httpx.post(url, json={"messages": messages(data_url(SCAN)), "temperature": 5}, timeout=60))
    assert err["code"] == "invalid_request" and err["param"] == "temperature"
    err = error(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=60))
    assert err["code"] == "invalid_request"
    assert error(httpx.post(url, json={"messages": []}, timeout=60))["param"] == "messages"
    # The rest of the API keeps its own shape.
    other = httpx.post(f"{base}/generate", json={"image_base64": "@@@"}, timeout=60).json()["error"]
    assert other["code"] == "bad_base64" and "type" not in other
