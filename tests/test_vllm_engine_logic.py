"""The vLLM engine's pure logic (no GPU here): engine arguments, sampling parameters, modes, prompts."""

from __future__ import annotations

import base64
import json

from PIL import Image

from config import Settings
from deepseek_ocr import Task, resolve_prompt
from engines.vllm_engine import (
    FAMILIES,
    FAMILY_MODES,
    VLLMEngine,
    engine_args,
    engine_prompt,
    mm_kwargs,
    model_env,
    parallel_plan_error,
    preprocess_processes,
    sampling_kwargs,
    tuned_moe_folder,
)
from errors import InputError
from pipeline import build_request
from process.image_process import MODES, OCR2_MODES


def test_engine_args_follow_settings():
    s = Settings(_env_file=None, model_path="/models/ocr", load_format="dummy", gpu_mem_utilization=0.8,
                 max_concurrency=64, tensor_parallel_size=2, kv_cache_dtype="fp8")  # fmt: skip
    kw = engine_args(s, "proc")
    assert kw["model"] == "/models/ocr" and kw["load_format"] == "dummy"
    assert kw["max_num_seqs"] == 64 and kw["gpu_memory_utilization"] == 0.8 and kw["tensor_parallel_size"] == 2
    assert (
        kw["enable_prefix_caching"] is False and kw["logits_processors"] == ["proc"] and kw["kv_cache_dtype"] == "fp8"
    )
    assert kw["renderer_num_workers"] == s.num_workers  # input processing in NUM_WORKERS renderer threads
    # AsyncLLM alone would run 2048 tokens a step (a couple of page images per vision-encoder pass)
    assert kw["max_num_batched_tokens"] == 16384
    assert engine_args(Settings(_env_file=None, max_num_batched_tokens=4096), "p")["max_num_batched_tokens"] == 4096
    assert engine_args(Settings(_env_file=None, mm_cache_gb=4), "p")["renderer_num_workers"] == 1  # vLLM's rule


def test_sampling_params_keep_grounding_and_guard():
    s = Settings(_env_file=None, ngram_size=30, ngram_window=90)
    req = build_request(
        s, Image.new("RGB", (1240, 1754), "white"), "document", engine=VLLMEngine(s), max_tokens=1000, ignore_eos=True
    )
    kw = sampling_kwargs(req)
    assert kw["skip_special_tokens"] is False and kw["max_tokens"] == 1000 and kw["ignore_eos"] is True
    assert kw["extra_args"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
    s0 = Settings(_env_file=None, ngram_size=0)
    off = build_request(s0, Image.new("RGB", (64, 64)), "free", engine=VLLMEngine(s0))
    assert "extra_args" not in sampling_kwargs(off)


def test_every_mode_reaches_vllms_processor_as_mm_processor_kwargs():
    assert mm_kwargs(MODES["gundam"]) == {"base_size": 1024, "image_size": 640, "crop_mode": True}
    assert mm_kwargs(MODES["tiny"]) == {"base_size": 512, "image_size": 512, "crop_mode": False}
    assert mm_kwargs(MODES["gundam_m"]) == {"base_size": 1280, "image_size": 1024, "crop_mode": True}
    s = Settings(_env_file=None)
    req = build_request(s, Image.new("RGB", (1240, 1754), "white"), "document", engine=VLLMEngine(s), mode="large")
    prompt = engine_prompt(req)
    assert prompt["mm_processor_kwargs"] == {"base_size": 1280, "image_size": 1280, "crop_mode": False}
    assert prompt["prompt"].startswith("<image>\n") and prompt["multi_modal_data"]["image"] is req.image


def test_ocr2_runs_its_own_modes_and_token_layout():
    engine = VLLMEngine(Settings(_env_file=None, engine="vllm"))
    engine.modes, engine.token_strategy = FAMILY_MODES["DeepSeek-OCR-2"]
    req = build_request(Settings(_env_file=None), Image.new("RGB", (1240, 1754)), "document", engine=engine)
    assert req.mode is OCR2_MODES["gundam"] and req.plan.image_tokens == 256 + 1 + 24 * 36
    try:
        build_request(Settings(_env_file=None), Image.new("RGB", (64, 64)), "free", engine=engine, mode="tiny")
    except InputError as e:
        assert e.status == 422 and e.accepted == ["gundam", "base"]
    else:
        raise AssertionError("tiny must be refused for DeepSeek-OCR-2")


def test_base_size_image_size_crop_mode_set_the_default_mode():
    engine = VLLMEngine(Settings(_env_file=None, engine="vllm", base_size=512, image_size=512, crop_mode=False))
    assert engine.default_mode() == "tiny"
    req = build_request(engine.settings, Image.new("RGB", (1240, 1754)), "free", engine=engine)
    assert req.mode is MODES["tiny"] and req.plan.image_tokens == 8 * 9 + 1
    assert VLLMEngine(Settings(_env_file=None, default_mode="large")).default_mode() == "large"


def test_model_switches_reach_vllms_processes_by_environment():
    assert model_env(Settings(_env_file=None, batched_encoder=False, uint8_pixels=False, device_views=False)) == {
        "BATCHED_ENCODER": "0", "UINT8_PIXELS": "0", "DEVICE_VIEWS": "0"
    }  # fmt: skip
    assert model_env(Settings(_env_file=None, batched_encoder=True, uint8_pixels=True, device_views=True)) == {
        "BATCHED_ENCODER": "1", "UINT8_PIXELS": "1", "DEVICE_VIEWS": "1"
    }  # fmt: skip
    assert Settings(_env_file=None).batched_encoder is False  # measured slower: opt-in
    assert Settings(_env_file=None).uint8_pixels is True  # bit-identical inputs, measured faster: on by default
    assert Settings(_env_file=None).device_views is True  # bit-identical views, measured faster: on by default


def test_encoder_cuda_graphs_are_a_compilation_option():
    on = engine_args(Settings(_env_file=None, encoder_cudagraph=True), "p")["compilation_config"]
    off = engine_args(Settings(_env_file=None, encoder_cudagraph=False), "p")["compilation_config"]
    assert on == {"cudagraph_mm_encoder": True} and off == {"cudagraph_mm_encoder": False}
    assert Settings(_env_file=None).encoder_cudagraph is True  # same embeddings as eager, measured faster: default
    assert engine_args(Settings(_env_file=None), "p")["max_num_seqs"] == 256  # the benchmarks' setting
    eager = engine_args(Settings(_env_file=None, enforce_eager=True), "p")["compilation_config"]
    assert eager == {"cudagraph_mm_encoder": False}


def test_tuned_moe_configs_are_used_only_when_present(tmp_path):
    assert tuned_moe_folder(tmp_path) is None
    (tmp_path / "E=64,N=896,device_name=NVIDIA_H100_80GB_HBM3.json").write_text("{}")
    assert tuned_moe_folder(tmp_path) == str(tmp_path)


def test_vllm_engine_answers_every_prompt_kind_and_names_families():
    assert VLLMEngine.tasks == frozenset(Task)
    assert resolve_prompt("What is in the picture?").prompt.startswith("<image>\n")
    assert FAMILIES["DeepseekOCR2ForCausalLM"] == "DeepSeek-OCR-2"


def test_engine_that_cannot_start_reports_why(monkeypatch):
    import asyncio

    engine = VLLMEngine(Settings(_env_file=None, engine="vllm"))
    asyncio.run(engine.start())  # no GPU (and no vllm) here
    assert not engine.ready and "vLLM could not start" in engine.error
    assert "needs 1 GPUs; 0 visible" in engine.error


def test_streaming_on_the_cpu_engine(client, scan_png):
    body = {"prompt": "free", "image_base64": base64.b64encode(scan_png).decode(), "stream": True}
    with client.stream("POST", "/generate", json=body) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and "Docling" in events[0]


def test_preprocessing_processes_follow_the_cores():
    assert preprocess_processes(Settings(_env_file=None), cores=16) == 0  # default: renderer threads
    auto = Settings(_env_file=None, preprocess_processes=-1)
    assert preprocess_processes(auto, cores=16) == 8 and preprocess_processes(auto, cores=64) == 8
    assert preprocess_processes(auto, cores=2) == 0  # a small machine keeps the renderer threads
    assert preprocess_processes(Settings(_env_file=None, preprocess_processes=3), cores=64) == 3
    assert preprocess_processes(Settings(_env_file=None, preprocess_processes=0), cores=64) == 0


def test_parallel_sizes_are_checked_against_the_gpus_present():
    assert parallel_plan_error(Settings(_env_file=None), gpus=1) is None  # the default: one GPU, DP=1, TP=1
    two = Settings(_env_file=None, data_parallel_size=2)
    assert parallel_plan_error(two, gpus=2) is None
    err = parallel_plan_error(two, gpus=1)
    assert "DATA_PARALLEL_SIZE=2" in err and "needs 2 GPUs; 1 visible" in err
    assert "needs 4 GPUs" in parallel_plan_error(
        Settings(_env_file=None, data_parallel_size=2, tensor_parallel_size=2), 2
    )


def test_shipped_moe_configs_are_what_vllm_reads():
    """engines/moe_configs/ holds vLLM's tuner output for DeepSeek-OCR's MoE (E=64, N=896, bf16): vLLM 0.26 reads
    every key but triton_version as a batch size and picks the nearest one, so every entry must be a whole config."""
    from engines.vllm_engine import MOE_CONFIGS

    files = sorted(MOE_CONFIGS.glob("E=*.json"))
    names = [f.name for f in files]
    # vLLM's get_config_file_name: the device name with spaces as _, every H200 variant folded to NVIDIA_H200
    assert "E=64,N=896,device_name=NVIDIA_H100_80GB_HBM3.json" in names
    assert "E=64,N=896,device_name=NVIDIA_H200.json" in names
    assert tuned_moe_folder() == str(MOE_CONFIGS)
    keys = {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"}
    for f in files:
        table = json.loads(f.read_text())
        table.pop("triton_version")
        sizes = sorted(int(m) for m in table)
        assert sizes[0] == 1 and sizes[-1] >= 8192  # decode of one page up to full 8192-token prefill chunks
        for cfg in table.values():
            assert set(cfg) == keys and all(v > 0 and v & (v - 1) == 0 for k, v in cfg.items() if k != "num_stages")
