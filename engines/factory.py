"""Which engine ENGINE=auto|vllm|cpu|remote means on this machine, and building it. The seam (deepseek_ocr.py)
imports no engine; this module is the one place that does."""

from __future__ import annotations

import importlib.util
import logging

from config import Settings
from deepseek_ocr import OCREngine
from engines import weights

log = logging.getLogger("ocr.engine")


def choose_engine(settings: Settings) -> tuple[str, str]:
    """Which engine ENGINE=auto|vllm|cpu|remote means on this machine, and why."""
    if settings.engine != "auto":
        return settings.engine, f"ENGINE={settings.engine}"
    if importlib.util.find_spec("vllm") is None:
        return "cpu", "vllm is not installed"
    try:
        import torch

        if not torch.cuda.is_available():
            return "cpu", "no CUDA device"
    except ImportError:
        return "cpu", "torch is not installed"
    where = weights.describe(settings.model_path)
    if weights.config_file(settings.model_path) is None and settings.load_format != "dummy":
        return "cpu", f"no weights at {where}"
    return "vllm", f"CUDA, vllm and weights ({where}) present"


def build_engine(settings: Settings) -> OCREngine:
    kind, why = choose_engine(settings)
    if kind == "vllm":
        from engines.vllm_serve_engine import ManagedVLLMServeEngine, api_servers

        if servers := api_servers(settings):
            why += f"; VLLM_API_SERVERS={settings.vllm_api_servers}: `vllm serve` ({servers} API servers) child"
            engine: OCREngine = ManagedVLLMServeEngine(settings)
        else:
            from engines.vllm_engine import VLLMEngine

            why += f"; VLLM_API_SERVERS={settings.vllm_api_servers}: vLLM in this process"
            engine = VLLMEngine(settings)
    elif kind == "remote":
        from engines.remote_engine import RemoteEngine

        engine = RemoteEngine(settings)
    else:
        from engines.cpu_engine import CPUEngine

        engine = CPUEngine(settings)
    log.info("engine: %s (%s)", kind, why)
    engine.selection_reason = why  # type: ignore[attr-defined]
    return engine
