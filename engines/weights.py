"""Where MODEL_PATH's weights are: a local folder, or a hub id already in the Hugging Face cache (this service never
downloads them). Read before any engine starts: to choose the engine, and to know the model family the managed
`vllm serve` child is started for (its modes, its page connector)."""

from __future__ import annotations

import os
from pathlib import Path


def hub_cache() -> Path:
    """The Hugging Face hub cache, as vLLM's loader finds it (HF_HUB_CACHE, else HF_HOME/hub)."""
    if folder := os.environ.get("HF_HUB_CACHE"):
        return Path(folder)
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def config_file(model_path: str) -> Path | None:
    """The weights' config.json: in the folder MODEL_PATH names, or in the cached snapshot of the hub id (None
    if neither has one)."""
    folder = Path(model_path)
    if folder.is_dir():
        return found if (found := folder / "config.json").is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # it comes with vLLM: without it no vLLM engine runs here
        return None
    try:
        found = try_to_load_from_cache(model_path, "config.json", cache_dir=hub_cache())
    except ValueError:  # not a folder and not a hub id either
        return None
    return Path(found) if isinstance(found, str) else None


def describe(model_path: str) -> str:
    """Where MODEL_PATH was looked for, in words."""
    if Path(model_path).is_dir():
        return f"folder {model_path}"
    return f"hub id {model_path} (cache {hub_cache()})"
