"""The GPU engine: vLLM's native DeepSeek-OCR / DeepSeek-OCR-2, ONE AsyncLLM for the whole app.

- Every resolution mode, per request: `mm_processor_kwargs` reach vLLM's processor and the mode-aware
  model classes of engines/vllm_modes.py (a vLLM plugin) count the placeholders to match.
- Input processing goes through vLLM's renderer (`render_cmpl_async`: tiling, tensors, tokens in the
  renderer's thread pool of NUM_WORKERS threads), never on the event loop.
- The repetition guard is the batched one (process/ngram_norepeat.py: one vectorised pass per step, no
  device sync, correct under vLLM's async scheduling), same semantics and extra_args as vLLM's
  NGramPerReqLogitsProcessor (NGRAM_IMPL=vllm selects vLLM's own).
- A cancelled request (client gone) is aborted in the engine. If vLLM's engine-core process dies, every
  request gets 503 with the reason, /ready turns 503, and the app's ENGINE_DEATH policy runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from PIL import Image

from config import Settings
from deepseek_ocr import EngineUnavailable, OCREngine, OCRRequest, OCRResult, Task
from engines import vllm_prep
from errors import InputError
from process.image_process import MODES, OCR2_MODES, ResolutionMode

log = logging.getLogger("ocr.vllm")
FAMILIES = {"DeepseekOCRForCausalLM": "DeepSeek-OCR", "DeepseekOCR2ForCausalLM": "DeepSeek-OCR-2"}
FAMILY_MODES = {"DeepSeek-OCR": (MODES, "v1"), "DeepSeek-OCR-2": (OCR2_MODES, "v2")}
MOE_CONFIGS = Path(__file__).with_name("moe_configs")  # tuned fused-MoE kernel configs, one JSON per GPU


def engine_args(settings: Settings, logits_processor: object) -> dict:
    """AsyncEngineArgs keywords from our settings (kept pure for tests)."""
    return {
        "model": settings.model_path,
        "load_format": settings.load_format,
        "gpu_memory_utilization": settings.gpu_mem_utilization,
        "max_num_seqs": settings.max_concurrency,
        "max_model_len": settings.max_model_len,
        "max_num_batched_tokens": settings.max_num_batched_tokens,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "enable_prefix_caching": False,  # every page is a new image: nothing to reuse
        "mm_processor_cache_gb": settings.mm_cache_gb,
        # The renderer's thread pool runs input processing; vLLM allows >1 only without the mm cache.
        "renderer_num_workers": settings.num_workers if settings.mm_cache_gb == 0 else 1,
        "kv_cache_dtype": settings.kv_cache_dtype,
        "logits_processors": [logits_processor],
        "enforce_eager": settings.enforce_eager,
        # Encoder graphs are CUDA graphs too: ENFORCE_EAGER turns them off with the rest.
        "compilation_config": {"cudagraph_mm_encoder": settings.encoder_cudagraph and not settings.enforce_eager},
        "disable_log_stats": False,  # KV-cache and queue gauges reach /metrics
    }


def model_env(settings: Settings) -> dict[str, str]:
    """Environment that vLLM's processes (the engine core, `vllm serve`'s) read in our model classes."""
    return {
        "BATCHED_ENCODER": "1" if settings.batched_encoder else "0",
        "UINT8_PIXELS": "1" if settings.uint8_pixels else "0",
        "DEVICE_VIEWS": "1" if settings.device_views else "0",
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


def mm_kwargs(mode: ResolutionMode) -> dict:
    """The processor arguments of a resolution mode (vLLM's `mm_processor_kwargs`)."""
    return {"base_size": mode.base_size, "image_size": mode.image_size, "crop_mode": mode.crop_mode}


def engine_prompt_of(image: Image.Image, prompt: str, mode: ResolutionMode = MODES["gundam"]) -> dict:
    """The prompt vLLM's renderer takes for one page."""
    return {"prompt": prompt, "multi_modal_data": {"image": image}, "mm_processor_kwargs": mm_kwargs(mode)}


def engine_prompt(req: OCRRequest) -> dict:
    return engine_prompt_of(req.image, req.spec.prompt, req.mode)


def parallel_plan_error(settings: Settings, gpus: int) -> str | None:
    """Why TENSOR_PARALLEL_SIZE x DATA_PARALLEL_SIZE cannot run on `gpus` GPUs, or None if it can."""
    need = settings.tensor_parallel_size * settings.data_parallel_size
    if need <= gpus:
        return None
    return (
        f"TENSOR_PARALLEL_SIZE={settings.tensor_parallel_size} x DATA_PARALLEL_SIZE={settings.data_parallel_size} "
        f"needs {need} GPUs; {gpus} visible (CUDA_VISIBLE_DEVICES)"
    )


def from_cores(setting: int, cores: int | None = None, *, leave: int | None = None) -> int:
    """A process-count setting: as given, or for -1 from the cores (none below 4 cores): half of them, at most 8,
    or with `leave` all but that many, at most 16."""
    if setting >= 0:
        return setting
    cores = cores or os.cpu_count() or 1
    if cores < 4:
        return 0
    return min(8, cores // 2) if leave is None else min(16, cores - leave)


def preprocess_processes(settings: Settings, cores: int | None = None) -> int:
    """How many renderer worker processes to run (PREPROCESS_PROCESSES; -1 = from the core count)."""
    return from_cores(settings.preprocess_processes, cores)


def tuned_moe_folder(folder: Path = MOE_CONFIGS) -> str | None:
    """The folder of tuned MoE configs to hand vLLM (VLLM_TUNED_CONFIG_FOLDER), if it holds any."""
    return str(folder) if folder.is_dir() and any(folder.glob("E=*.json")) else None


class VLLMEngine(OCREngine):
    name = "vllm"
    tasks = frozenset(Task)

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.llm = None
        self.family = "unknown"
        self.details: dict = {}
        self._watch: asyncio.Task | None = None
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        t0 = time.perf_counter()
        try:
            import torch

            if problem := parallel_plan_error(self.settings, torch.cuda.device_count()):
                self.error = f"vLLM could not start: {problem}"
                log.error(self.error)
                return
            self.llm = await asyncio.to_thread(self._build)
        except Exception as e:  # the app keeps serving /health and says why; nothing crash-loops
            self.error = f"vLLM could not start: {type(e).__name__}: {e}"
            log.exception("vLLM engine failed to start")
            return
        cfg = self.llm.vllm_config
        arch = (getattr(cfg.model_config.hf_config, "architectures", None) or ["?"])[0]
        self.family = FAMILIES.get(arch, arch)
        self.modes, self.token_strategy = FAMILY_MODES.get(self.family, (MODES, "v1"))
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
            "modes": list(self.modes),
            "default_mode": self.default_mode(),
            "tuned_moe_configs": os.environ.get("VLLM_TUNED_CONFIG_FOLDER"),
            "batched_encoder": self.settings.batched_encoder,
        }
        self.details["preprocess_processes"] = await self._start_pool(preprocess_processes(self.settings))
        self.details["start_seconds"] = round(time.perf_counter() - t0, 1)
        self.ready = True
        self._watch = asyncio.create_task(self._watch_engine())
        log.info("vLLM engine ready: %s", self.details)

    def _build(self):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from engines import vllm_register

        vllm_register.register()  # also a vllm.general_plugins entry point (vllm_plugin/), for spawned processes
        os.environ.update(model_env(self.settings))  # the engine-core process inherits it
        if folder := tuned_moe_folder():
            os.environ.setdefault("VLLM_TUNED_CONFIG_FOLDER", folder)
        if self.settings.ngram_impl == "vllm":
            from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor as proc
        else:
            from engines.vllm_ngram import BatchedNGramLogitsProcessor as proc
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(self.settings, proc)))

    async def _start_pool(self, workers: int) -> int:
        """Start the renderer processes and prove each works end to end; on failure use renderer threads."""
        if workers <= 0:
            return 0
        loop = asyncio.get_running_loop()
        warm = engine_prompt_of(Image.new("RGB", (64, 64), "white"), "<image>\nFree OCR.")
        try:
            self._pool = vllm_prep.make_pool(self.llm.vllm_config, workers)
            blobs = await asyncio.gather(
                *(loop.run_in_executor(self._pool, vllm_prep.render, warm) for _ in range(workers))
            )
            pickle.loads(blobs[0])
        except Exception:
            log.exception("renderer processes could not start; input processing stays in renderer threads")
            self._drop_pool()
            return 0
        log.info("vLLM input processing in %d worker processes", workers)
        return workers

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _render(self, prompt: dict):
        """The engine input for one prompt: in the worker processes when they run, else in vLLM's renderer."""
        if self._pool is not None:
            try:
                blob = await asyncio.get_running_loop().run_in_executor(self._pool, vllm_prep.render, prompt)
                return await asyncio.to_thread(pickle.loads, blob)
            except BrokenProcessPool:
                log.exception("a renderer process died; input processing falls back to renderer threads")
                self._drop_pool()
        (engine_input,) = await self.llm.renderer.render_cmpl_async([prompt])
        return engine_input

    async def _watch_engine(self) -> None:
        """vLLM's engine-core process can die between requests too: notice within a second."""
        while self.llm is not None and not self.llm.errored:
            await asyncio.sleep(1.0)
        if self.llm is not None:
            self.died("vLLM's engine-core process died (EngineDeadError); see the log above")

    async def stop(self) -> None:
        await super().stop()
        if self._watch:
            self._watch.cancel()
        self._drop_pool()
        if self.llm is not None:
            llm, self.llm = self.llm, None
            with contextlib.suppress(Exception):
                llm.shutdown()

    def info(self) -> dict:
        return {**super().info(), **self.details}

    def _dead(self, e: BaseException) -> EngineUnavailable:
        self.died(f"vLLM's engine-core process died: {type(e).__name__}: {e}")
        return EngineUnavailable(f"the vllm engine is not available: {self.error}")

    async def _submit(self, req: OCRRequest, output_kind):
        from vllm import SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.llm is None or self.llm.errored:
            raise self._dead(RuntimeError("engine stopped"))
        params = SamplingParams(**sampling_kwargs(req), output_kind=output_kind)
        t0 = time.perf_counter()
        try:
            engine_input = await self._render(engine_prompt(req))
        except EngineDeadError as e:
            raise self._dead(e) from e
        except ValueError as e:  # vLLM's own validation (prompt too long for max_model_len, ...)
            raise InputError(422, "engine_rejected", f"vLLM refused the request: {e}") from e
        prep_s = time.perf_counter() - t0
        stream = self.llm.generate(engine_input, params, req.request_id or uuid.uuid4().hex)
        return stream, prep_s

    async def _outputs(self, stream) -> AsyncIterator:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            async for out in stream:  # cancelling the consumer aborts the request inside vLLM
                yield out
        except EngineDeadError as e:
            raise self._dead(e) from e

    async def _run(self, req: OCRRequest) -> OCRResult:
        from vllm.sampling_params import RequestOutputKind

        stream, prep_s = await self._submit(req, RequestOutputKind.FINAL_ONLY)
        t1 = time.perf_counter()
        final = None
        async for out in self._outputs(stream):
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
            raise self.not_ready()
        async with self._slots:
            stream, prep_s = await self._submit(req, RequestOutputKind.DELTA)
            t1 = time.perf_counter()
            pieces: list[str] = []
            prompt_tokens = output_tokens = 0
            finish = None
            async for out in self._outputs(stream):  # closing this generator (client gone) aborts the request
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
