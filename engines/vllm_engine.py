"""The GPU engine: vLLM's native DeepSeek-OCR / DeepSeek-OCR-2, ONE AsyncLLM for the whole app.

- Input processing (tiling, normalisation, tokenising: vLLM's DeepSeek-OCR processor) runs in a thread
  pool ahead of the engine, never on the event loop, so the GPU is not starved by serial preprocessing.
- The repetition guard is the batched GPU version (process/ngram_norepeat.py), same semantics and
  extra_args as vLLM's NGramPerReqLogitsProcessor (NGRAM_IMPL=vllm selects vLLM's own).
- A cancelled request (client gone) is aborted in the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from config import Settings
from deepseek_ocr import OCREngine, OCRRequest, OCRResult, Task
from process.image_process import MODES, ResolutionMode

log = logging.getLogger("ocr.vllm")
FAMILIES = {"DeepseekOCRForCausalLM": "DeepSeek-OCR", "DeepseekOCR2ForCausalLM": "DeepSeek-OCR-2"}


def engine_args(settings: Settings, logits_processor: object) -> dict:
    """AsyncEngineArgs keywords from our settings (kept pure for tests)."""
    return {
        "model": settings.model_path,
        "load_format": settings.load_format,
        "gpu_memory_utilization": settings.gpu_mem_utilization,
        "max_num_seqs": settings.max_concurrency,
        "max_model_len": settings.max_model_len,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "enable_prefix_caching": False,  # every page is a new image: nothing to reuse
        "mm_processor_cache_gb": settings.mm_cache_gb,
        "kv_cache_dtype": settings.kv_cache_dtype,
        "logits_processors": [logits_processor],
        "enforce_eager": settings.enforce_eager,
    }


def sampling_kwargs(req: OCRRequest) -> dict:
    """SamplingParams keywords for one request (kept pure for tests)."""
    kw: dict = {
        "temperature": req.temperature,
        "max_tokens": req.max_tokens,
        "skip_special_tokens": False,  # grounding tokens must survive
        "ignore_eos": req.ignore_eos,
    }
    if req.ngram_size > 0:
        kw["extra_args"] = {
            "ngram_size": req.ngram_size,
            "window_size": req.ngram_window,
            "whitelist_token_ids": list(req.ngram_whitelist),
        }
    return kw


def mm_kwargs(mode: ResolutionMode) -> dict | None:
    """Processor overrides a resolution mode would need; None for vLLM's built-in Gundam mode (the only
    one vLLM 0.26 runs: requests that would need overrides are refused in _submit)."""
    if mode == MODES["gundam"]:
        return None
    return {"base_size": mode.base_size, "image_size": mode.image_size, "crop_mode": mode.crop_mode}


class VLLMEngine(OCREngine):
    name = "vllm"
    tasks = frozenset(Task)

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.llm = None
        self.family = "unknown"
        self.details: dict = {}
        self._prep = ThreadPoolExecutor(max_workers=max(1, settings.num_workers), thread_name_prefix="vllm-prep")

    async def start(self) -> None:
        t0 = time.perf_counter()
        try:
            self.llm = await asyncio.to_thread(self._build)
        except Exception as e:  # the app keeps serving /health and says why; nothing crash-loops
            self.error = f"vLLM could not start: {type(e).__name__}: {e}"
            log.exception("vLLM engine failed to start")
            return
        cfg = self.llm.vllm_config
        arch = (getattr(cfg.model_config.hf_config, "architectures", None) or ["?"])[0]
        self.family = FAMILIES.get(arch, arch)
        cache = cfg.cache_config
        self.details = {
            "family": self.family,
            "architecture": arch,
            "dtype": str(cfg.model_config.dtype),
            "kv_cache_blocks": cache.num_gpu_blocks,
            "kv_cache_tokens": (cache.num_gpu_blocks or 0) * cache.block_size,
            "kv_cache_dtype": cache.cache_dtype,
            "max_num_seqs": cfg.scheduler_config.max_num_seqs,
            "load_format": self.settings.load_format,
            "ngram_impl": self.settings.ngram_impl,
            "modes": "gundam only (vLLM 0.26's processor)",
            "start_seconds": round(time.perf_counter() - t0, 1),
        }
        self.ready = True
        log.info("vLLM engine ready: %s", self.details)

    def _build(self):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if self.settings.ngram_impl == "vllm":
            from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor as proc
        else:
            from engines.vllm_ngram import BatchedNGramLogitsProcessor as proc
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(self.settings, proc)))

    async def stop(self) -> None:
        await super().stop()
        if self.llm is not None:
            self.llm.shutdown()
        self._prep.shutdown(wait=False, cancel_futures=True)

    def info(self) -> dict:
        return {**super().info(), **self.details}

    def _prepare(self, req: OCRRequest, request_id: str, params):
        """vLLM's input processing (tiling, tensors, tokens) for one page: runs in a worker thread."""
        prompt = {"prompt": req.spec.prompt, "multi_modal_data": {"image": req.image}}
        return self.llm.input_processor.process_inputs(
            request_id, prompt, params, supported_tasks=self._supported_tasks
        )

    async def _submit(self, req: OCRRequest, output_kind):
        from vllm import SamplingParams

        if mm_kwargs(req.mode) is not None:
            from errors import InputError

            # vLLM 0.26's DeepSeek-OCR processor counts image placeholders with its built-in Gundam sizes;
            # other sizes fail inside vLLM (placeholder mismatch), so refuse them up front.
            raise InputError(
                422, "mode_not_supported", f"the vllm engine runs gundam mode only, not {req.mode.name}",
                accepted=["gundam"],
            )  # fmt: skip

        params = SamplingParams(**sampling_kwargs(req), output_kind=output_kind)
        request_id = req.request_id or uuid.uuid4().hex
        if not hasattr(self, "_supported_tasks"):
            self._supported_tasks = await self.llm.get_supported_tasks()
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self._prep, self._prepare, req, request_id, params)
        except ValueError as e:  # vLLM's own validation (prompt too long for max_model_len, ...)
            from errors import InputError

            raise InputError(422, "engine_rejected", f"vLLM refused the request: {e}") from e
        prep_s = time.perf_counter() - t0
        stream = self.llm.generate(prepared, params, prepared.request_id, prompt_text=req.spec.prompt)
        return stream, prep_s

    async def _run(self, req: OCRRequest) -> OCRResult:
        from vllm.sampling_params import RequestOutputKind

        stream, prep_s = await self._submit(req, RequestOutputKind.FINAL_ONLY)
        t1 = time.perf_counter()
        final = None
        async for out in stream:  # cancelling this task aborts the request inside vLLM
            final = out
        assert final is not None
        o = final.outputs[0]
        return OCRResult(
            text=o.text,
            prompt_tokens=len(final.prompt_token_ids or ()),
            output_tokens=len(o.token_ids),
            finish_reason=o.finish_reason or "stop",
            timings={"preprocess": round(prep_s, 4), "inference": round(time.perf_counter() - t1, 4)},
        )

    async def stream_result(self, req: OCRRequest) -> AsyncIterator[str | OCRResult]:
        from vllm.sampling_params import RequestOutputKind

        if not self.ready:
            await self.generate(req)  # raises the not-ready error
        async with self._slots:
            stream, prep_s = await self._submit(req, RequestOutputKind.DELTA)
            t1 = time.perf_counter()
            pieces: list[str] = []
            prompt_tokens = output_tokens = 0
            finish = None
            async for out in stream:  # closing this generator (client gone) aborts the request inside vLLM
                prompt_tokens = max(prompt_tokens, len(out.prompt_token_ids or ()))
                if out.outputs:
                    o = out.outputs[0]
                    output_tokens += len(o.token_ids)
                    finish = o.finish_reason or finish
                    if o.text:
                        pieces.append(o.text)
                        yield o.text
            yield OCRResult(
                text="".join(pieces),
                prompt_tokens=prompt_tokens,
                output_tokens=output_tokens,
                finish_reason=finish or "stop",
                timings={"preprocess": round(prep_s, 4), "inference": round(time.perf_counter() - t1, 4)},
            )
