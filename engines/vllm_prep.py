"""vLLM's input processing for DeepSeek-OCR in a pool of worker processes, so it scales with CPU cores.

Each worker builds vLLM's own renderer from the engine's config (tokenizer + the DeepSeek-OCR processor,
no GPU) and turns a prompt {text, image, mm_processor_kwargs} into the engine input that
`AsyncLLM.generate` takes (tiles, normalised tensors, expanded image tokens): the same work the renderer's
threads would do in the API process, where one GIL serialises most of it. The input comes back pickled.
Each worker uses its own renderer rank, so multimodal item ids never collide between workers.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor

_renderer = None


def _init(config_blob: bytes) -> None:
    global _renderer
    import torch

    from engines import vllm_register

    torch.set_num_threads(1)
    vllm_register.register()
    config = pickle.loads(config_blob)
    config.parallel_config._api_process_rank = os.getpid()  # mm ids: "renderer{pid}-mm-{n}", unique per worker
    from vllm.renderers import renderer_from_config

    _renderer = renderer_from_config(config)


def render(prompt: dict) -> bytes:
    """One prompt -> the pickled engine input (runs in a worker)."""
    assert _renderer is not None, "worker not initialised"
    (engine_input,) = _renderer.render_cmpl([prompt])
    return pickle.dumps(engine_input, protocol=pickle.HIGHEST_PROTOCOL)


def make_pool(vllm_config: object, workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` renderer processes (spawned: the API process may hold CUDA state)."""
    blob = pickle.dumps(vllm_config, protocol=pickle.HIGHEST_PROTOCOL)
    ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init, initargs=(blob,))
