"""vLLM general plugin of this service (entry point declared in vllm_plugin/pyproject.toml): maps vLLM's
DeepSeek-OCR architectures to the mode-aware classes of engines/vllm_modes.py, and registers the page-file media
connector (engines/vllm_page_loader.py). Light on purpose: vLLM loads plugins early in every process, so the model
module is named here and imported only when vLLM needs it."""

MODEL_CLASSES = {
    "DeepseekOCRForCausalLM": "engines.vllm_modes:DeepseekOCRModesForCausalLM",
    "DeepseekOCR2ForCausalLM": "engines.vllm_modes:DeepseekOCR2ModesForCausalLM",
}


def register() -> None:
    from vllm import ModelRegistry

    for arch, target in MODEL_CLASSES.items():
        ModelRegistry.register_model(arch, target)

    from engines import vllm_page_loader

    vllm_page_loader.register()
