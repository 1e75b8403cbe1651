"""Where MODEL_PATH's weights are (engines/weights.py): a local folder, or a hub id in the Hugging Face cache, laid
out as huggingface_hub lays it out. The managed `vllm serve` child reads its model family from there, so a hub id
(MODEL_PATH's default) gets the same modes and page connector as a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config import Settings
from engines import weights
from engines.vllm_serve_engine import PAGE_CONNECTOR, ManagedVLLMServeEngine, child_env, model_family
from process.image_process import MODES, OCR2_MODES

ARCH = {"deepseek-ai/DeepSeek-OCR": "DeepseekOCRForCausalLM", "deepseek-ai/DeepSeek-OCR-2": "DeepseekOCR2ForCausalLM"}


def cache_model(hub: Path, repo: str, arch: str, commit: str = "3f1c2a9e") -> Path:
    """A hub id's snapshot in the cache: refs/main names the commit, snapshots/<commit>/ holds the files."""
    folder = hub / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"architectures": [arch]}))
    return snapshot / "config.json"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"


def test_a_cached_hub_id_has_its_snapshots_config(hub):
    files = {repo: cache_model(hub, repo, arch) for repo, arch in ARCH.items()}
    for repo, config in files.items():
        assert weights.config_file(repo) == config
        assert weights.describe(repo) == f"hub id {repo} (cache {hub})"
    assert model_family("deepseek-ai/DeepSeek-OCR") == "DeepSeek-OCR"
    assert model_family("deepseek-ai/DeepSeek-OCR-2") == "DeepSeek-OCR-2"


def test_weights_that_are_not_there_are_none(hub, tmp_path):
    assert weights.config_file("deepseek-ai/DeepSeek-OCR") is None  # not in the cache: never downloaded here
    assert weights.config_file(str(tmp_path / "no" / "such" / "folder")) is None  # neither a folder nor a hub id
    empty = tmp_path / "empty"
    empty.mkdir()
    assert weights.config_file(str(empty)) is None and weights.describe(str(empty)) == f"folder {empty}"
    (hub / "models--deepseek-ai--DeepSeek-OCR" / "refs").mkdir(parents=True)  # a download that never finished
    assert weights.config_file("deepseek-ai/DeepSeek-OCR") is None
    assert model_family("deepseek-ai/DeepSeek-OCR") is None


def test_hf_hub_cache_wins_over_hf_home(hub, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    config = cache_model(elsewhere, "deepseek-ai/DeepSeek-OCR", ARCH["deepseek-ai/DeepSeek-OCR"])
    assert weights.config_file("deepseek-ai/DeepSeek-OCR") is None
    monkeypatch.setenv("HF_HUB_CACHE", str(elsewhere))
    assert weights.config_file("deepseek-ai/DeepSeek-OCR") == config


def test_the_managed_child_for_a_hub_id_gets_its_familys_modes_and_connector(hub, tmp_path):
    for repo, arch in ARCH.items():
        cache_model(hub, repo, arch)
    ocr = Settings(_env_file=None, model_path="deepseek-ai/DeepSeek-OCR", vllm_api_servers=1, data_dir=tmp_path)
    ocr = ocr.model_copy(update={"vllm_page_files": True, "device_views": True})
    assert child_env(ocr, {}, {})["VLLM_MEDIA_CONNECTOR"] == PAGE_CONNECTOR
    assert ManagedVLLMServeEngine(ocr).modes == MODES
    ocr2 = ocr.model_copy(update={"model_path": "deepseek-ai/DeepSeek-OCR-2"})
    engine = ManagedVLLMServeEngine(ocr2)
    assert engine.modes == OCR2_MODES and engine.token_strategy == "v2"
    assert "VLLM_MEDIA_CONNECTOR" not in child_env(ocr2, {}, {})
