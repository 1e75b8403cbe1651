"""Every setting of the service, read from environment variables (or a .env file).

Names are the upper-case field names (MODEL_PATH, ENGINE, ...). Values are validated at start-up:
a bad value stops the service with a message naming the variable, instead of failing later.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Mode = Literal["tiny", "small", "base", "large", "gundam", "gundam_m"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- engine -------------------------------------------------------------------------
    engine: Literal["auto", "vllm", "cpu", "remote"] = Field(
        "auto",
        description="auto: vLLM when CUDA, vllm and the weights are all there, else the CPU engine; "
        "remote: OpenAI-compatible servers at REMOTE_URLS",
    )
    model_path: str = Field("deepseek-ai/DeepSeek-OCR", description="local folder or hub id of the weights")
    load_format: str = Field("auto", description="vLLM load format; 'dummy' = random weights (tests)")
    gpu_mem_utilization: float = Field(0.75, gt=0.0, le=1.0)
    max_concurrency: int = Field(
        256, ge=1, le=4096,
        description="requests the engine runs at once (vLLM max_num_seqs: vLLM's own default is 256 below 70 GB of "
        "GPU memory, 1024 above; every GPU figure in bench/RESULTS.md ran with 256, and 512 measured 1.03x, within "
        "one host's spread)",
    )  # fmt: skip
    max_model_len: int = Field(8192, ge=512)
    max_num_batched_tokens: int = Field(
        16384, ge=1024,
        description="vLLM tokens per engine step (prefill chunks, and how many page images the vision encoder "
        "takes at once); 16384 is what vLLM's LLM class uses on a >= 70 GiB GPU (AsyncLLM's own default is 2048)",
    )  # fmt: skip
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    ngram_impl: Literal["batched", "vllm"] = Field(
        "batched", description="repetition guard: ours (GPU, batched) or vLLM's"
    )
    batched_encoder: bool = Field(
        False,
        description="opt-in: DeepSeek-OCR's vision encoder over all images of an engine step at once "
        "(engines/vllm_encoder.py; also takes images of different modes in one step) instead of vLLM's per-image "
        "loop; measured 0.95x vLLM's on an H100 (bench/RESULTS.md), so vLLM's stays the default",
    )
    uint8_pixels: bool = Field(
        True,
        description="vLLM's processor hands page views to the engine as uint8 and the GPU maps them to the float "
        "values (bit-identical inputs; engines/vllm_pixels.py): 0.63-0.68x the processor time, half the bytes",
    )
    device_views: bool = Field(
        True,
        description="vLLM's DeepSeek-OCR processor sends each page's pixels and the GPU cuts and resizes the views "
        "(Pillow's arithmetic, bit-identical; engines/vllm_views.py) instead of Pillow in vLLM's API processes: "
        "half their CPU per page, 1.01-1.22x end to end on an H100 (bench/RESULTS.md). DeepSeek-OCR only (OCR-2 "
        "keeps the processor's views)",
    )
    encoder_cudagraph: bool = Field(
        True,
        description="vLLM's CUDA graphs for DeepSeek-OCR's vision encoder (cudagraph_mm_encoder; Gundam-sized steps "
        "replay graphs, other modes run eagerly): 1.22x the engine alone on an H100, the same embeddings as the eager "
        "encoder (bench/encoder_graph_check.py). OCR-2 has no encoder graphs in vLLM 0.26 and is not affected",
    )
    mm_cache_gb: float = Field(0.0, ge=0, description="vLLM multimodal processor cache (0: every page is new)")
    kv_cache_dtype: str = Field("auto", description="vLLM KV cache dtype, e.g. fp8")
    enforce_eager: bool = Field(False, description="vLLM without CUDA graphs (faster start, slower decode)")
    preprocess_processes: int = Field(
        0, ge=-1, le=64,
        description="vLLM input processing in this many worker processes (0: in the API process's renderer "
        "threads; -1: half the CPU cores, at most 8). See bench/RESULTS.md before turning it on",
    )  # fmt: skip
    vllm_api_servers: int = Field(
        -1, ge=-1, le=64,
        description="-1: `vllm serve` with all CPU cores but two (at most 16) as API servers on a machine with 4 "
        "or more cores, else vLLM in this process; 0: vLLM in this process (one AsyncLLM); N: `vllm serve` with N "
        "API servers as a child process this service manages (same engine arguments, plugin and guard), so input "
        "processing scales with cores (bench/RESULTS.md: 0.79-0.88x the engine alone vs 0.69x in-process on one H100)",
    )  # fmt: skip
    vllm_instances: int = Field(
        1, ge=1, le=8,
        description="`vllm serve` children sharing the GPU (with VLLM_API_SERVERS != 0), each with 1/N of "
        "GPU_MEM_UTILIZATION, MAX_CONCURRENCY and the API servers: N EngineCore loops on N cores. Start an MPS daemon "
        "first: without it they take turns on the GPU (0.89-0.93x one instance on an H100; bench/RESULTS.md)",
    )  # fmt: skip
    vllm_serve_port: int = Field(
        0, ge=0, le=65535, description="loopback port of that `vllm serve` (0: a free one; the Nth child: +N-1)"
    )
    vllm_serve_args: str = Field(
        "", description="more `vllm serve` flags for that child, shell-quoted (e.g. \"--mm-tensor-ipc torch_shm\"); "
        "they come last, so they win over the flags this service derives"
    )  # fmt: skip
    vllm_page_files: bool = Field(
        True,
        description="pages reach that `vllm serve` as raw pixel files (PPM in /dev/shm, else under DATA_DIR) "
        "instead of PNG data URLs, so its API processes do not decode every page again (engines/page_files.py): "
        "vLLM's time before its queue 0.69 s instead of 1.46, 1.09-1.11x end to end on an H100 (bench/RESULTS.md)",
    )
    vllm_page_sources: bool = Field(
        True,
        description="an upright RGB PNG or JPEG upload goes to that `vllm serve` as the uploaded file itself and its "
        "API processes decode it, instead of this process decoding it and sending its pixels: a burst's decoding is "
        "spread over vLLM's API processes (engines/page_files.py)",
    )
    vllm_serve_start_timeout_s: float = Field(
        900.0, gt=0, description="time that `vllm serve` has to answer /health (weights, compilation, CUDA graphs)"
    )
    vllm_warmup_pages: int = Field(
        64, ge=0, le=1024,
        description="pages (A4 text, default mode, 2 tokens each) sent at once through that `vllm serve` before "
        "/ready says ready, so the first burst after a start does not meet every API process's and the engine's "
        "first-time work (engines/warmup.py; 0: none)",
    )  # fmt: skip
    engine_death: Literal["exit", "stay"] = Field(
        "exit",
        description="when the engine's process dies: exit (SIGTERM to ourselves after ENGINE_DEATH_GRACE_S, so the "
        "container's restart policy brings a fresh engine) or stay up answering 503",
    )
    engine_death_grace_s: float = Field(3.0, ge=0, description="time to answer in-flight requests 503 before exiting")
    num_workers: int = Field(2, ge=1, le=256, description="CPU workers for decoding, tiling and the CPU engine")
    cpu_engine_threads: int = Field(0, ge=0, description="ONNX threads per CPU-engine worker (0 = cores / NUM_WORKERS)")

    # --- image preprocessing (the official scripts' names) ---------------------------------
    base_size: int = Field(1024, ge=256, le=2048)
    image_size: int = Field(640, ge=256, le=2048)
    crop_mode: bool = True
    min_crops: int = Field(2, ge=1)
    max_crops: int = Field(6, ge=1, le=64)
    default_mode: Mode | None = Field(
        None, description="mode of requests that name none; unset: the mode BASE_SIZE/IMAGE_SIZE/CROP_MODE describe"
    )

    # --- generation ---------------------------------------------------------------------
    max_tokens: int = Field(8192, ge=1)
    ngram_size: int = Field(30, ge=0, description="repetition guard n-gram size (0 = off)")
    ngram_window: int = Field(90, ge=1)
    ngram_whitelist_token_ids: Annotated[list[int], NoDecode] = Field(default=[128821, 128822])

    # --- limits -------------------------------------------------------------------------
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(60_000_000, ge=10_000, description="width x height of one image")
    max_pdf_pages: int = Field(500, ge=1)
    max_batch_files: int = Field(100, ge=1)
    request_timeout_s: float = Field(300.0, gt=0)
    url_timeout_s: float = Field(20.0, gt=0)
    url_max_redirects: int = Field(5, ge=0, le=20)
    allow_private_urls: bool = Field(False, description="let image_url/pdf_url reach private/loopback hosts")
    url_allow_networks: Annotated[list[str], NoDecode] = Field(
        default=[], description="CIDRs image_url may reach even if private, e.g. 10.1.0.0/16"
    )

    # --- storage, jobs and serving ------------------------------------------------------
    max_queue: int = Field(
        256, ge=0, description="single-image requests allowed to wait beyond engine capacity before 503"
    )
    intake_slots: int = Field(
        8, ge=0, le=4096,
        description="requests that read their upload and get ready for the engine at once; more wait in arrival "
        "order, so a burst's first pages reach the engine first instead of all at the end (intake.py; 0: no limit)",
    )  # fmt: skip
    intake_hold_s: float = Field(
        0.25, gt=0, description="the longest one request holds an intake slot: a slow upload goes on without one"
    )
    api_keys: Annotated[list[str], NoDecode] = Field(default=[], description="accepted API keys (comma-separated)")
    api_keys_file: Path | None = Field(None, description="a file of API keys, one per line")
    log_format: Literal["json", "text"] = "json"
    data_dir: Path = Field(Path("data"), description="jobs database, job files, temporary work")
    job_workers: int = Field(1, ge=1, le=64, description="jobs run at once (each runs its pages concurrently)")
    job_queue_max: int = Field(100, ge=1, description="unfinished jobs accepted before 429")
    result_ttl_s: float = Field(86400.0, gt=0, description="finished jobs and their results are deleted after this")
    log_level: str = "INFO"

    # --- remote engine (ENGINE=remote): pages go to OpenAI-compatible DeepSeek-OCR servers -------
    # Operator configuration, not user input: these URLs do not go through the image_url SSRF rules.
    remote_urls: Annotated[list[str], NoDecode] = Field(
        default=[], description="base URLs of `vllm serve` or of this service (comma-separated; a /v1 suffix is fine)"
    )
    remote_concurrency: int = Field(64, ge=1, le=4096, description="requests in flight per backend")
    remote_health_interval_s: float = Field(5.0, gt=0, description="seconds between GET /v1/models checks")
    remote_connect_timeout_s: float = Field(5.0, gt=0, description="connect timeout; also the health-check timeout")
    remote_api_key: str | None = Field(None, description="sent to every backend as Authorization: Bearer")
    remote_image_format: Literal["png", "jpeg"] = Field("png", description="how re-encoded pages travel")

    # --- object storage (S3 and S3-compatible; storage/) ----------------------------------
    # Credentials, region and endpoint come from the AWS SDK's own settings (AWS_PROFILE, AWS_ACCESS_KEY_ID,
    # instance roles, AWS_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL); these say what callers may use.
    s3_buckets: Annotated[list[str], NoDecode] = Field(
        default=[], description="buckets s3:// inputs may read (comma-separated; '*' = any; empty = s3:// off)"
    )
    s3_output_buckets: Annotated[list[str], NoDecode] = Field(
        default=[], description="buckets a job's output_uri may write (comma-separated; '*' = any; empty = off)"
    )
    s3_max_keys: int = Field(100_000, ge=1, description="documents one input_uri prefix may hold")
    s3_upload_attempts: int = Field(4, ge=1, le=20, description="tries per result object before it is reported")
    # --- job callbacks and live progress (jobs/callbacks.py, jobs/events.py) ------------
    callback_secret: str = Field("", description="HMAC-SHA256 key that signs callback bodies (X-OCR-Signature)")
    callback_retries: int = Field(5, ge=0, le=20, description="callback attempts after the first one")
    callback_backoff_s: float = Field(2.0, gt=0, description="wait before the first retry; doubles each time")
    callback_timeout_s: float = Field(10.0, gt=0, description="one callback POST's time limit")
    events_keepalive_s: float = Field(15.0, gt=0, description="SSE comment sent when a job's stream is idle")
    # --- jobs across replicas (JOB_BACKEND=redis: jobs/redis_store.py, jobs/distributed.py) ---------
    job_backend: Literal["sqlite", "redis"] = Field(
        "sqlite", description="sqlite: jobs of this replica; redis: jobs shared by replicas on one DATA_DIR volume"
    )
    redis_url: str = Field("redis://localhost:6379/0", description="Redis of JOB_BACKEND=redis")
    redis_prefix: str = Field("ocr", description="prefix of this service's Redis keys and queue name")
    job_page_workers: int = Field(0, ge=0, le=1024, description="page tasks one replica runs at once (0: the engine's)")
    job_page_timeout_s: float = Field(600.0, gt=0, description="a page task's limit (then it is an error page)")
    job_lease_s: float = Field(
        30.0,
        ge=3,
        description="a replica renews its tasks' in-progress marks every third of this; a killed "
        "replica's tasks run again elsewhere after at most this",
    )
    job_page_tries: int = Field(5, ge=1, le=100, description="tries of a page task (a replica killed mid-page: one)")

    @field_validator("ngram_whitelist_token_ids", mode="before")
    @classmethod
    def _split_ints(cls, v: object) -> object:
        if isinstance(v, str):
            return [int(x) for x in v.replace(",", " ").split()]
        return v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        return [x for x in v.replace(",", " ").split()] if isinstance(v, str) else v

    @field_validator("remote_urls", mode="before")
    @classmethod
    def _split_urls(cls, v: object) -> object:
        urls = v.replace(",", " ").split() if isinstance(v, str) else v
        out = []
        for url in urls or []:  # type: ignore[union-attr]
            url = str(url).strip().rstrip("/").removesuffix("/v1").rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"REMOTE_URLS: {url!r} is not an http(s) URL")
            out.append(url)
        return out

    @field_validator("s3_buckets", "s3_output_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, v: object) -> object:
        return [x for x in v.replace(",", " ").split()] if isinstance(v, str) else v

    @field_validator("url_allow_networks", mode="before")
    @classmethod
    def _split_networks(cls, v: object) -> object:
        if isinstance(v, str):
            v = [x for x in v.replace(",", " ").split()]
        for net in v or []:  # type: ignore[union-attr]
            ipaddress.ip_network(net, strict=False)
        return v


@lru_cache
def get_settings() -> Settings:
    return Settings()
