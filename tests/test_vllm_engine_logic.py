"""The vLLM engine's pure logic (no GPU here): engine arguments, sampling parameters, modes, prompts."""

from __future__ import annotations

import base64

from PIL import Image

from config import Settings
from deepseek_ocr import Task, resolve_prompt
from engines.vllm_engine import FAMILIES, VLLMEngine, engine_args, mm_kwargs, sampling_kwargs
from pipeline import build_request
from process.image_process import MODES


def test_engine_args_follow_settings():
    s = Settings(_env_file=None, model_path="/models/ocr", load_format="dummy", gpu_mem_utilization=0.8,
                 max_concurrency=64, tensor_parallel_size=2, kv_cache_dtype="fp8")  # fmt: skip
    kw = engine_args(s, "proc")
    assert kw["model"] == "/models/ocr" and kw["load_format"] == "dummy"
    assert kw["max_num_seqs"] == 64 and kw["gpu_memory_utilization"] == 0.8 and kw["tensor_parallel_size"] == 2
    assert (
        kw["enable_prefix_caching"] is False and kw["logits_processors"] == ["proc"] and kw["kv_cache_dtype"] == "fp8"
    )


def test_sampling_params_keep_grounding_and_guard():
    s = Settings(_env_file=None, ngram_size=30, ngram_window=90)
    req = build_request(s, Image.new("RGB", (1240, 1754), "white"), "document", max_tokens=1000, ignore_eos=True)
    kw = sampling_kwargs(req)
    assert kw["skip_special_tokens"] is False and kw["max_tokens"] == 1000 and kw["ignore_eos"] is True
    assert kw["extra_args"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
    off = build_request(Settings(_env_file=None, ngram_size=0), Image.new("RGB", (64, 64)), "free")
    assert "extra_args" not in sampling_kwargs(off)


def test_only_gundam_goes_to_vllm_natively():
    assert mm_kwargs(MODES["gundam"]) is None
    assert mm_kwargs(MODES["tiny"]) == {"base_size": 512, "image_size": 512, "crop_mode": False}


def test_vllm_engine_answers_every_prompt_kind_and_names_families():
    assert VLLMEngine.tasks == frozenset(Task)
    assert resolve_prompt("What is in the picture?").prompt.startswith("<image>\n")
    assert FAMILIES["DeepseekOCR2ForCausalLM"] == "DeepSeek-OCR-2"


def test_engine_that_cannot_start_reports_why(monkeypatch):
    import asyncio

    engine = VLLMEngine(Settings(_env_file=None, engine="vllm"))
    asyncio.run(engine.start())  # vllm is not installed here
    assert not engine.ready and "vLLM could not start" in engine.error


def test_streaming_on_the_cpu_engine(client, scan_png):
    body = {"prompt": "free", "image_base64": base64.b64encode(scan_png).decode(), "stream": True}
    with client.stream("POST", "/generate", json=body) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and "Docling" in events[0]
