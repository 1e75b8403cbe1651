"""ENGINE=vllm with VLLM_API_SERVERS=N: `vllm serve` with N API servers as a child process of this service.

One API process holds one GIL for all input processing (measured on an H100: 0.69x the engine-alone rate
in-process, 1.01x with `vllm serve --api-server-count 8`; bench/RESULTS.md). So this service stays the front
(uploads, PDFs, jobs, layouts) and runs vLLM's OpenAI server on loopback with the same engine arguments as
the in-process engine (engine_args), this service's vLLM plugin (every mode), repetition guard and MoE table,
and sends it pages as the remote engine does.
- VLLM_INSTANCES=K runs K such children on the one GPU, each with 1/K of its memory, of MAX_CONCURRENCY and of
  the API servers, each its own backend: one EngineCore's Python loop (scheduling, outputs) keeps the GPU
  waiting part of a burst, and K of them run on K cores. Only with an MPS daemon: without one the children
  take turns on the GPU (0.89-0.93x one instance on an H100; with it 1.03-1.09x, within the spread; RESULTS).
- start(): spawn each child (engines/vllm_serve_child.py) in its own process group (its API servers and
  EngineCore join it), log to DATA_DIR/vllm_serve/serve.log (serve2.log, ...), wait for its /health; a child
  that exits or never answers leaves the reason (exit code, last log lines) in /ready while /health keeps answering.
- A child's exit while serving is the engine's death: 503 engine_unavailable with the exit code and its
  log's last error line, and the ENGINE_DEATH policy. The rest of its process group, and the other children,
  are killed at once. A page that fails while a child goes down (vLLM takes seconds to exit) waits for the
  exit and gets the 503.
- stop(): SIGTERM to every child's group, SIGKILL to what is left after STOP_GRACE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import httpx

from config import Settings
from deepseek_ocr import EngineUnavailable, OCRRequest
from engines import weights
from engines.api_lanes import Lanes
from engines.page_files import PageFiles, choose_folder
from engines.remote_engine import Backend, BackendFailed, RemoteEngine
from engines.vllm_engine import FAMILIES, FAMILY_MODES, engine_args, from_cores, model_env, tuned_moe_folder
from engines.vllm_serve_child import ServeChild, log_tail, mps_running
from engines.warmup import warm_requests
from errors import InputError

log = logging.getLogger("ocr.vllm_serve")
ROOT = Path(__file__).resolve().parents[1]
NGRAM_PROCESSORS = {
    "batched": "engines.vllm_ngram:BatchedNGramLogitsProcessor",
    "vllm": "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor",
}
# The message's content as the prompt: vLLM puts the image placeholder before the text ("<image>\n" + text),
# which is the prompt the in-process engine sends (remote_engine.chat_body strips it from ours).
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
# engine_args keywords that are not `vllm serve` flags here: the N API servers are the preprocessing
# parallelism (vLLM's default of one renderer thread each, as measured), not NUM_WORKERS threads.
NOT_SERVE_FLAGS = {"renderer_num_workers"}
# Booleans whose vLLM default is not False, so False must be written (--no-...).
EXPLICIT_FALSE = {"enable_prefix_caching"}
# A page that failed waits this long for the child's exit before its answer: `vllm serve` exits ~5 s after
# its EngineCore died (it waits for its API servers), answering 500 or resetting connections meanwhile.
DEATH_WAIT_S = 10.0
STOP_GRACE_S = 30.0
WARMUP_TIMEOUT_S = 300.0  # a warm-up that takes longer is given up (logged): readiness follows health
SERVED_BY_MIDDLEWARE = "engines.vllm_served_by.ServedBy"
PAGE_CONNECTOR = "deepseek_ocr_pages"  # engines/vllm_page_loader.py's name (not imported here: it imports vLLM)
KEEP_ALIVE_S = 86400  # the child's keep-alive for idle connections (vLLM's default: 5 s)


def engine_flags(kw: dict) -> list[str]:
    """engine_args keywords (model aside) as `vllm serve` flags: the same names, dashed."""
    out: list[str] = []
    for key, value in kw.items():
        if key == "model" or key in NOT_SERVE_FLAGS:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                out.append(flag)
            elif key in EXPLICIT_FALSE:
                out.append("--no-" + flag[2:])
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        elif isinstance(value, list | tuple):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def api_servers(settings: Settings, cores: int | None = None) -> int:
    """How many vLLM API servers VLLM_API_SERVERS means here (0: vLLM in this process; -1: all cores but two,
    at most 16, for the EngineCore and this service: 14 measured 1.13x 8 on a 16-core H100 host)."""
    return from_cores(settings.vllm_api_servers, cores, leave=2)


def serve_argv(settings: Settings, port: int, template_path: Path | str, media_dir: Path | None = None) -> list[str]:
    """The `vllm serve` command line of VLLM_API_SERVERS=N: the in-process engine's arguments, N API servers
    (and the one folder it may read page files from, with VLLM_PAGE_FILES)."""
    kw = engine_args(settings, NGRAM_PROCESSORS[settings.ngram_impl])
    media = ["--allowed-local-media-path", str(media_dir)] if media_dir else []
    return [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", kw["model"],
        "--served-model-name", settings.model_path, "--host", "127.0.0.1", "--port", str(port),
        "--api-server-count", str(max(1, api_servers(settings))),
        *engine_flags(kw),
        "--chat-template", str(template_path), "--chat-template-content-format", "string",
        "--disable-uvicorn-access-log",  # this service logs each request; the child's log keeps vLLM's own lines
        "--middleware", SERVED_BY_MIDDLEWARE,  # each API process names itself: pages go to the least busy
        *media,
        *shlex.split(settings.vllm_serve_args),
    ]  # fmt: skip


# this service's own settings named VLLM_* (VLLM_SERVE_PORT, ...): no `vllm serve` reads them, and vLLM warns
# "Unknown vLLM environment variable detected" for each one it finds
OWN_VLLM_SETTINGS = frozenset(n.upper() for n in Settings.model_fields if n.upper().startswith("VLLM_"))


def serve_env(base: Mapping[str, str]) -> dict[str, str]:
    """A `vllm serve`'s environment: `base` less this service's own VLLM_* settings, the repo importable (guard,
    plugin, middleware), the tuned MoE configs if any, idle connections kept (the lanes to its API processes stay
    where they were placed)."""
    env = {k: v for k, v in base.items() if k.upper() not in OWN_VLLM_SETTINGS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH", "")) if p)
    env.setdefault("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", str(KEEP_ALIVE_S))
    if folder := tuned_moe_folder():
        env.setdefault("VLLM_TUNED_CONFIG_FOLDER", folder)
    return env


def page_connector(settings: Settings, family: str | None) -> dict[str, str]:
    """The child's media connector for page files: read straight into the processor's tensor
    (engines/vllm_page_loader.py), which only the DEVICE_VIEWS processor of DeepSeek-OCR takes."""
    if settings.vllm_page_files and settings.device_views and family == "DeepSeek-OCR":
        return {"VLLM_MEDIA_CONNECTOR": PAGE_CONNECTOR}
    return {}


def child_env(settings: Settings, base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The managed child's whole environment: the page connector unless `base` names one, this service's
    environment, the model classes' switches, then `extra` (tests), through serve_env."""
    connector = page_connector(settings, model_family(settings.model_path))
    return serve_env({**connector, **base, **model_env(settings), **extra})


def write_chat_template(folder: Path) -> Path:
    path = folder / "chat_template.jinja"
    path.write_text(CHAT_TEMPLATE)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_family(model_path: str) -> str | None:
    """DeepSeek-OCR or DeepSeek-OCR-2, from the weights' config.json, in a local folder or the hub cache (None if
    unknown)."""
    if (config := weights.config_file(model_path)) is None:
        return None
    try:
        arch = json.loads(config.read_text())["architectures"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return FAMILIES.get(arch)


def instance_settings(settings: Settings, instances: int) -> Settings:
    """One of VLLM_INSTANCES children's settings: its share of the GPU's memory, of MAX_CONCURRENCY and of the
    API servers (at least one each)."""
    if instances <= 1:
        return settings
    return settings.model_copy(
        update={
            "gpu_mem_utilization": round(settings.gpu_mem_utilization / instances, 4),
            "max_concurrency": math.ceil(settings.max_concurrency / instances),
            "vllm_api_servers": max(1, api_servers(settings) // instances),
        }
    )


class ManagedVLLMServeEngine(RemoteEngine):
    name = "vllm"

    def __init__(
        self,
        settings: Settings,
        argv: Callable[[int], list[str]] | None = None,
        env: Mapping[str, str] | None = None,
    ):
        """`argv(port)` and `env` replace the `vllm serve` command and add to its environment (tests only)."""
        super().__init__(settings)
        self.instances = settings.vllm_instances
        self.child_settings = instance_settings(settings, self.instances)
        limit = math.ceil(self.capacity() / self.instances)
        # One backend per child; the ports are picked at start.
        self.backends = [Backend("http://127.0.0.1:0", limit) for _ in range(self.instances)]
        for b in self.backends:
            b.max_model_len = settings.max_model_len  # what it is started with (its card says so too)
        self.children: list[ServeChild] = []
        self._argv, self._env = argv, dict(env or {})
        self._exit_reason: str | None = None
        self._serving = self._stopping = False
        self.start_seconds: float | None = None
        self.page_files = PageFiles(choose_folder(settings.data_dir)) if settings.vllm_page_files else None
        self.lazy_pages = settings.vllm_page_sources  # an upload goes on as it is, vLLM's API processes decode it
        self._warming = False
        self.warmup: dict | None = None  # pages, failed, seconds
        self.media_connector: str | None = None  # vLLM's, in the child (engines/vllm_page_loader.py)
        self.mps: bool | None = None  # whether an MPS daemon ran when the children started
        if family := model_family(settings.model_path):
            self.modes, self.token_strategy = FAMILY_MODES[family]

    def capacity(self) -> int:
        """Twice vLLM's max_num_seqs in flight, so its scheduler always has the next pages waiting."""
        return 2 * self.settings.max_concurrency

    # --- the children -----------------------------------------------------------------------

    def _workdir(self) -> Path:
        folder = self.settings.data_dir / "vllm_serve"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            return Path(tempfile.mkdtemp(prefix="vllm_serve_"))

    async def start(self) -> None:
        t0 = time.monotonic()
        try:
            problem = await self._spawn(t0)
        except Exception as e:  # the app keeps serving /health and says why; nothing crash-loops
            problem = f"{type(e).__name__}: {e}"
            log.exception("vllm serve could not start")
        if problem:
            self.error = f"vllm serve could not start: {problem}"
            tails = "\n".join(line for c in self.children for line in log_tail(c.log_path, 40))
            log.error("%s\n%s", self.error, tails)
            await self._terminate(10)
            return
        self.start_seconds = round(time.monotonic() - t0, 1)
        self._serving = True
        for child in self.children:
            log.info("%s (pid %s) answers on port %d", child.name, child.pid, child.port)
            child.backend.url = child.url
            if child.api_servers > 1:
                await self._warm_lanes(child)  # before it is ready: the first pages already spread
        log.info("vllm serve: %d instance(s) up after %.1f s", self.instances, self.start_seconds)
        await super().start()
        if self._exit_reason and self._health:  # one died while we connected
            self._health.cancel()
        if self.ready and self.settings.vllm_warmup_pages:
            await self._warm_up(self.settings.vllm_warmup_pages)

    async def _warm_up(self, pages: int) -> None:
        """VLLM_WARMUP_PAGES pages at once through the normal path before /ready says ready (engines/warmup.py).
        A page that fails is logged, not fatal: the children's health decides readiness, as always."""
        self._warming = True
        self._changed()
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(WARMUP_TIMEOUT_S):
                outcomes = await asyncio.gather(
                    *(self._run(r) for r in warm_requests(self, self.settings, pages)), return_exceptions=True
                )
        except TimeoutError:  # every page still out was cancelled with it
            outcomes = [TimeoutError(f"the warm-up was not done in {WARMUP_TIMEOUT_S:.0f} s")] * pages
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        self.warmup = {"pages": pages, "failed": len(failed), "seconds": round(time.monotonic() - t0, 1)}
        if failed:
            log.warning("warm-up: %d of %d pages failed (first: %r)", len(failed), pages, failed[0])
        log.info("warm-up: %s", self.warmup)
        self._warming = False
        self._changed()

    async def _warm_lanes(self, child: ServeChild) -> None:
        """A share of lanes for each API process; without lanes, pages share one pool (whoever accepts)."""
        lanes = Lanes(self.make_client)
        try:
            per_server = math.ceil(child.backend.limit / child.api_servers)
            await lanes.warm(f"{child.url}/health", child.api_servers, per_server)
        except Exception:
            log.exception("could not open lanes to the API processes: pages share one connection pool")
            await lanes.aclose()
            return
        child.lanes = lanes

    async def _spawn(self, t0: float) -> str | None:
        """Start the children one after another (each sizes its memory by what the others left) and wait for
        each one's /health: None once all answer, else why not."""
        work = self._workdir()
        if self.page_files:
            self.page_files.open()
        media = self.page_files.folder if self.page_files else None
        template = write_chat_template(work)
        env = child_env(self.settings, os.environ, self._env)
        self.media_connector = env.get("VLLM_MEDIA_CONNECTOR", "http")
        self.mps = mps_running(env)
        if self.instances > 1 and not self.mps:
            log.warning(
                "VLLM_INSTANCES=%d without an MPS control daemon: the children take turns on the GPU, which measured "
                "0.89-0.93x one instance on an H100 (bench/RESULTS.md); start `nvidia-cuda-mps-control -d` first",
                self.instances,
            )
        deadline = t0 + self.settings.vllm_serve_start_timeout_s
        servers = max(1, api_servers(self.child_settings))
        for i, backend in enumerate(self.backends):
            base_port = self.settings.vllm_serve_port
            port = base_port + i if base_port else free_port()
            name = "vllm serve" if self.instances == 1 else f"vllm serve {i + 1}"
            log_path = work / ("serve.log" if i == 0 else f"serve{i + 1}.log")
            child = ServeChild(name, port, log_path, backend, servers)
            self.children.append(child)
            argv = self._argv(port) if self._argv else serve_argv(self.child_settings, port, template, media)
            log.info("starting %s: %s (log %s)", name, " ".join(argv), log_path)
            await child.spawn(argv, env, ROOT, self._exited)
            if problem := await child.wait_up(deadline, self.settings.vllm_serve_start_timeout_s):
                return problem if self.instances == 1 else f"{name}: {problem}"
        return None

    def _exited(self, child: ServeChild, code: int) -> None:
        """A child exited. While serving, that is the engine's death: the other children are stopped too (they
        share the GPU and the engine is not coming back in this process)."""
        if self._stopping or not self._serving or self._exit_reason:
            return
        self._exit_reason = child.exit_reason(code)
        for other in self.children:
            other.kill_group()
        if self._health:
            self._health.cancel()  # its port may answer again, but not our child: no coming back
        for b in self.backends:
            b.up, b.last_error = False, self._exit_reason
        self.died(self._exit_reason)  # 503 with the reason, then the ENGINE_DEATH policy
        self._changed()  # requests waiting for a slot wake and get the reason

    async def _terminate(self, grace: float) -> None:
        clean = await asyncio.gather(*(c.terminate(grace) for c in self.children))
        if not all(clean):
            log.warning("vllm serve still ran %.0f s after SIGTERM: SIGKILL", grace)

    async def stop(self) -> None:
        self._stopping = True
        await super().stop()
        for child in self.children:
            await child.close_lanes()
        await self._terminate(STOP_GRACE_S)
        if self.page_files:
            self.page_files.close()

    # --- the remote engine's view of its backends ---------------------------------------------

    def _changed(self) -> None:
        super()._changed()
        if self._exit_reason:  # dead stays dead, whatever a late health check saw
            self.ready, self.error = False, self._exit_reason
        elif self._warming and self.ready:
            self.ready, self.error = False, f"warming up ({self.settings.vllm_warmup_pages} pages, VLLM_WARMUP_PAGES)"

    def _unavailable(self) -> EngineUnavailable:
        return EngineUnavailable(f"the vllm engine is not available: {self._exit_reason}")

    def _child_of(self, b: Backend) -> ServeChild | None:
        return next((c for c in self.children if c.backend is b), None)

    @contextlib.asynccontextmanager
    async def connection(self, b: Backend) -> AsyncIterator[httpx.AsyncClient]:
        child = self._child_of(b)
        if child is None or child.lanes is None:
            async with super().connection(b) as client:
                yield client
            return
        async with child.lanes.take() as client:
            yield client

    @contextlib.asynccontextmanager
    async def page_ref(self, req: OCRRequest) -> AsyncIterator[str]:
        """With VLLM_PAGE_FILES: the page as a file while it is in flight (else its data URL): its upload when it
        went undecoded here (VLLM_PAGE_SOURCES), else its raw pixels."""
        source = req.source if self.lazy_pages else None  # VLLM_PAGE_SOURCES: the upload itself, decoded by vLLM
        path = await self.page_files.write_soon(req.image, source) if self.page_files else None
        if path is None:
            async with super().page_ref(req) as url:
                yield url
            return
        try:
            yield path.as_uri()
        finally:
            path.unlink(missing_ok=True)

    async def _acquire(self, tried: list[BackendFailed]) -> Backend:
        if self._exit_reason:
            raise self._unavailable()
        return await super()._acquire(tried)

    async def _failure(self, req: OCRRequest, e: InputError) -> InputError:
        """A page that failed (502, 503) may have met a child dying: then its death is the answer (503)."""
        e = await super()._failure(req, e)
        exits = {c.exit for c in self.children if c.exit is not None}
        if e.status in (502, 503) and exits:
            await asyncio.wait(exits, timeout=DEATH_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        return self._unavailable() if self._exit_reason else e

    def info(self) -> dict:
        first = self.children[0] if self.children else None
        return {
            **super().info(),
            "shape": "vllm serve (managed)",
            "api_servers": api_servers(self.settings),
            "instances": self.instances,
            "mps": self.mps,
            # the first child's (the only one by default): its port, pid, log and API processes
            **({"api_processes": first.lanes.info()} if first and first.lanes and self.instances == 1 else {}),
            "port": first.port if first else None,
            "pid": first.pid if first else None,
            "log": str(first.log_path) if first else None,
            **({"children": [c.info() for c in self.children]} if self.instances > 1 else {}),
            "start_seconds": self.start_seconds,
            **(
                {"page_files": {**self.page_files.info(), "connector": self.media_connector}} if self.page_files else {}
            ),
            "warmup": self.warmup,
        }
