"""Tune vLLM's fused-MoE Triton kernel for DeepSeek-OCR's MoE layers with vLLM's own tuner.

vLLM has no tuned table for DeepSeek-OCR's routed experts (64 experts, top-6, moe_intermediate_size 896, hidden
1280, bf16), warns "Using default MoE config ... E=64,N=896" and runs get_default_config's heuristic tiles. This
runs vLLM's tuner, benchmarks/kernels/benchmark_moe.py of the release in use (it is not in the wheel; put it at
.gpu/benchmark_moe.py, e.g. from the vllm-0.26.0 sdist on PyPI), in this one process, over a search space pruned
for these shapes and on the batch sizes DeepSeek-OCR serving hits, and writes the table with the tuner's own
save_configs into engines/moe_configs/, which engines/vllm_engine.py hands vLLM as VLLM_TUNED_CONFIG_FOLDER.

    PYTHONPATH=/tmp/site:$PWD python3 bench/moe_tune.py --model /tmp/dsocr --report "$OUT/moe_tune.json"
    python3 bench/moe_tune.py --batch-sizes 128 512 --max-configs 4 --budget-s 90   # a quicker, smaller run
    python3 bench/moe_tune.py --dry-run --tuner .gpu/benchmark_moe.py   # the plan only: no GPU work

Per batch size it prints the winner's kernel time next to the config vLLM runs without our file (its shipped table
if it has one for this GPU, else get_default_config), both timed again with the tuner's benchmark_config. A batch
size keeps vLLM's config when the winner is not faster there, and batch sizes the budget left untuned are written
with vLLM's config too, so the file never changes what vLLM runs for a size it did not measure. The file is
rewritten after every batch size: a run killed at the wall limit still leaves a usable table.

Without ray (the GPU box has none) a small in-process stand-in module takes its place: benchmark_moe.py only needs
ray.init, ray.remote on its worker class, .remote() calls, ray.get, available_resources() and get_gpu_ids().
Nothing here is imported by the service; vLLM, torch and triton are imported only by the tuner file.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

START = time.monotonic()
ROOT = Path(__file__).resolve().parents[1]
TUNER = ROOT / ".gpu" / "benchmark_moe.py"
OUT = ROOT / "engines" / "moe_configs"
# benchmarks/kernels/benchmark_moe.py of vllm-0.26.0.tar.gz on PyPI (its _version.py names commit f2654939e;
# its vllm/ sources equal the 0.26.0 wheel's but for _version.py, which there names ffd46bfab).
TUNER_SHA256 = "230151de56d177ac22920ff9dada010f4361933b34b54e18d5981367723a8bcf"

Config = dict[str, int]
KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")

# Tokens per forward step that reach the MoE layers; vLLM looks up the nearest key. Decode steps carry one token per
# running sequence (CUDA-graph padded, 1..max_num_seqs: MAX_CONCURRENCY=100 by default here, 512 in the engine512
# bench); prefill and mixed steps carry up to max_num_batched_tokens: 2048 for our AsyncLLM (vLLM 0.26's
# SchedulerConfig default, which the ENGINE_CONTEXT of AsyncLLM.from_engine_args gets) and 8192 for `vllm serve` on a
# >= 70 GiB GPU (OPENAI_API_SERVER). Powers of two keep every step within a third of a key. Listed most useful first
# (steady decode at 100 and 512 sequences, full prefill chunks, ...): the budget guard drops the tail. 4096 and 8192
# reuse the kernels 2048 compiled; 1, 2 and 4 need kernels of their own (Triton specializes on M * top-k % 16 and
# the small-batch path), so they come last.
BATCH_SIZES = (128, 512, 2048, 256, 64, 1024, 32, 16, 8, 4096, 8192, 1, 2, 4)

# DeepSeek-OCR / OCR-2 language model (DeepSeek-3B-MoE): config.json's language_config.
DSOCR = {"experts": 64, "topk": 6, "intermediate": 896, "hidden": 1280}
DSOCR_KEYS = ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "hidden_size")


@dataclass(frozen=True)
class MoEShape:
    experts: int = DSOCR["experts"]
    topk: int = DSOCR["topk"]
    intermediate: int = DSOCR["intermediate"]  # per expert and TP shard, after silu_and_mul: the file name's N
    hidden: int = DSOCR["hidden"]

    @property
    def shard_intermediate_size(self) -> int:
        """benchmark_moe's name for w1's rows (gate and up projections stacked)."""
        return 2 * self.intermediate

    @property
    def gemms(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(N, K) of the two grouped GEMMs one config serves: w1 (gate_up) and w2 (down)."""
        return (2 * self.intermediate, self.hidden), (self.hidden, self.intermediate)

    def tokens_per_expert(self, m: int) -> float:
        return m * self.topk / self.experts


def shape_from_config(cfg: Mapping[str, Any], tp_size: int = 1) -> MoEShape:
    """The routed-expert shape of a DeepSeek-OCR(-2) config.json, whose language model config is nested under
    language_config (benchmark_moe.get_model_params knows DeepseekV2ForCausalLM, not DeepseekOCRForCausalLM);
    text_config or a flat DeepSeek-V2/V3 config work too."""
    for sub in (cfg.get("language_config"), cfg.get("text_config"), cfg):
        if isinstance(sub, Mapping) and "n_routed_experts" in sub:
            inter = int(sub["moe_intermediate_size"])
            if inter % tp_size:
                raise ValueError(f"moe_intermediate_size {inter} is not divisible by tp {tp_size}")
            return MoEShape(
                int(sub["n_routed_experts"]), int(sub["num_experts_per_tok"]), inter // tp_size, int(sub["hidden_size"])
            )
    raise ValueError("no n_routed_experts in config.json (language_config, text_config or top level)")


def config_file_name(experts: int, n: int, device_name: str) -> str:
    """The file vLLM 0.26 looks up for a bf16 fused-MoE layer: fused_moe.get_config_file_name with dtype None (bf16
    has no dtype part), the device name as utils.platform_utils.get_device_name_as_file_name writes it (runs of
    whitespace and '/' become '_'), and every H200 variant folded to NVIDIA_H200. The run checks it against vLLM's
    own function on the GPU."""
    name = re.sub(r"[\s/]+", "_", device_name)
    if "H200" in name.split("_"):
        name = "NVIDIA_H200"
    return f"E={experts},N={n},device_name={name}.json"


def _c(bm: int, bn: int, bk: int, group: int, warps: int, stages: int) -> Config:
    return dict(zip(KEYS, (bm, bn, bk, group, warps, stages), strict=True))


# Candidate tiles by tokens per expert t = M * top-k / E, most promising first. Seeded with the winners in vLLM's
# shipped H100/H200 tables for the neighbouring shapes E=64,N=640 and E=64,N=1280 (and H20's E=64,N=896), which
# change regime where t does: t <= 2 is weight streaming (16-row tiles, long K), t up to ~24 wants 16/32-row tiles,
# beyond that compute-bound 64/128 x 128/256 tiles with 8 warps. vLLM's full space is 1920 configs per batch size;
# this is 23 distinct configs (and vLLM's defaults) in all, each compiled twice (the w1 and w2 GEMMs) per Triton
# specialization: M * top-k divisible by 16 or not, and the small-batch path of M <= 2.
SMALL = [
    _c(16, 64, 128, 1, 4, 4),
    _c(16, 32, 128, 1, 4, 4),
    _c(16, 64, 128, 1, 4, 3),
    _c(16, 64, 128, 1, 4, 5),
    _c(16, 128, 128, 1, 4, 3),
    _c(16, 128, 128, 1, 4, 4),
    _c(16, 128, 128, 1, 8, 4),
    _c(16, 64, 64, 1, 4, 4),
    _c(16, 256, 128, 1, 4, 3),
]
MID = [
    _c(16, 64, 128, 1, 4, 3),
    _c(16, 128, 128, 1, 4, 3),
    _c(16, 64, 128, 1, 4, 4),
    _c(16, 128, 128, 1, 8, 3),
    _c(16, 256, 128, 1, 4, 3),
    _c(32, 64, 128, 1, 4, 3),
    _c(32, 128, 128, 1, 4, 3),
    _c(32, 64, 64, 1, 4, 4),
    _c(64, 64, 64, 1, 4, 3),
    _c(64, 128, 64, 1, 4, 3),
]
LARGE = [
    _c(64, 128, 64, 1, 4, 3),
    _c(64, 64, 64, 1, 4, 3),
    _c(32, 128, 128, 1, 4, 3),
    _c(64, 128, 64, 1, 8, 4),
    _c(64, 256, 64, 1, 8, 4),
    _c(128, 128, 64, 1, 8, 3),
    _c(128, 256, 64, 1, 8, 4),
    _c(128, 128, 64, 1, 4, 4),
]
HUGE = [
    _c(128, 128, 64, 1, 8, 3),
    _c(128, 256, 64, 1, 8, 4),
    _c(128, 256, 64, 16, 8, 4),
    _c(128, 256, 64, 1, 8, 3),
    _c(128, 128, 64, 16, 8, 4),
    _c(64, 256, 64, 1, 8, 4),
    _c(128, 128, 64, 1, 4, 4),
    _c(64, 128, 64, 1, 4, 3),
]


def block_m_cap(m: int, shape: MoEShape) -> int:
    """The tallest tile worth trying: the power of two at or above twice the tokens an expert gets, at least 16."""
    return max(16, 2 ** math.ceil(math.log2(max(1.0, 2 * shape.tokens_per_expert(m)))))


def search_space(m: int, shape: MoEShape | None = None, max_configs: int | None = None) -> list[Config]:
    """The pruned candidates for batch size m, most promising first (vLLM's default for m is added by the run)."""
    shape = shape or MoEShape()
    t = shape.tokens_per_expert(m)
    pool = SMALL if t <= 2 else MID if t <= 24 else LARGE if t <= 96 else HUGE
    cap = block_m_cap(m, shape)
    ks = [k for _, k in shape.gemms]
    out = [dict(c) for c in pool if c["BLOCK_SIZE_M"] <= cap and all(k % c["BLOCK_SIZE_K"] == 0 for k in ks)]
    return out[:max_configs] if max_configs else out


def union_space(shape: MoEShape, sizes: Iterable[int]) -> list[Config]:
    """Every candidate of every batch size once: what get_configs_compute_bound returns while this runs."""
    return dedup(c for m in sizes for c in search_space(m, shape))


def dedup(configs: Iterable[Mapping[str, int]]) -> list[Config]:
    seen: set[tuple[int, ...]] = set()
    out: list[Config] = []
    for c in configs:
        key = config_key(c)
        if key not in seen:
            seen.add(key)
            out.append(dict(c))
    return out


def config_key(c: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(int(c[k]) for k in KEYS)


def tile(c: Mapping[str, int]) -> str:
    """BLOCK_M x BLOCK_N x BLOCK_K, then g<GROUP_SIZE_M> w<num_warps> s<num_stages>."""
    return "{}x{}x{} g{} w{} s{}".format(*config_key(c))


def clean(c: Mapping[str, int]) -> Config:
    """Only the six keys the bf16 kernel takes from a table (get_default_config adds SPLIT_K, always 1 here)."""
    return {k: int(c[k]) for k in KEYS}


# ---- ray stand-in ------------------------------------------------------------------------------------------------


class _Ref:
    def __init__(self, value: Any) -> None:
        self.value = value


class _Method:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> _Ref:
        return _Ref(self._fn(*args, **kwargs))  # runs now, in this process


class _Actor:
    def __init__(self, instance: Any) -> None:
        self._instance = instance

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self._instance, name))


class _ActorClass:
    def __init__(self, cls: type) -> None:
        self._cls = cls

    def remote(self, *args: Any, **kwargs: Any) -> _Actor:
        return _Actor(self._cls(*args, **kwargs))


def ray_standin() -> dict[str, types.ModuleType]:
    """Modules ray, ray.experimental and ray.experimental.tqdm_ray doing what benchmark_moe.py asks of ray, in
    process: one "GPU" (the current CUDA device), actors built and methods run at .remote(), ray.get unwraps."""
    ray = types.ModuleType("ray")
    ray.__doc__ = "in-process stand-in for benchmark_moe.py (bench/moe_tune.py)"

    def remote(*args: Any, **kwargs: Any) -> Any:
        def wrap(target: Any) -> Any:
            if isinstance(target, type):
                return _ActorClass(target)
            return _Method(target)

        if len(args) == 1 and not kwargs and callable(args[0]):
            return wrap(args[0])  # bare @ray.remote
        return wrap  # @ray.remote(num_gpus=1)

    def get(refs: Any, **kwargs: Any) -> Any:
        if isinstance(refs, list | tuple):
            return [r.value for r in refs]
        return refs.value

    ray.init = lambda *a, **k: None
    ray.shutdown = lambda *a, **k: None
    ray.is_initialized = lambda: True
    ray.remote = remote
    ray.get = get
    ray.available_resources = lambda: {"GPU": 1.0, "CPU": float(os.cpu_count() or 1)}
    ray.cluster_resources = ray.available_resources
    ray.get_gpu_ids = lambda: [0]
    experimental = types.ModuleType("ray.experimental")
    tqdm_ray = types.ModuleType("ray.experimental.tqdm_ray")

    def tqdm(iterable: Iterable[Any] = (), *args: Any, **kwargs: Any) -> Iterator[Any]:
        return iter(iterable)

    tqdm_ray.tqdm = tqdm
    experimental.tqdm_ray = tqdm_ray
    ray.experimental = experimental
    return {"ray": ray, "ray.experimental": experimental, "ray.experimental.tqdm_ray": tqdm_ray}


def ray_available() -> bool:
    if "ray" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def install_ray_standin() -> bool:
    """Put the stand-in in sys.modules unless a ray is importable; True if it did."""
    if ray_available():
        return False
    sys.modules.update(ray_standin())
    return True


def load_tuner(path: Path) -> types.ModuleType:
    """Import vLLM's benchmark_moe.py from path (with the ray stand-in where ray is missing)."""
    if not path.is_file():
        raise SystemExit(f"no tuner at {path}: put vLLM's benchmarks/kernels/benchmark_moe.py there (--tuner)")
    install_ray_standin()
    os.environ.setdefault("VLLM_MOE_TUNE_CACHE_CLEAR_INTERVAL", "0")  # its periodic cache clearing only costs time
    spec = importlib.util.spec_from_file_location("vllm_benchmark_moe", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Result:
    m: int
    tuned: bool = False
    config: Config = field(default_factory=dict)  # what the file holds for m
    default_config: Config = field(default_factory=dict)
    best_us: float | None = None
    default_us: float | None = None
    tried: int = 0
    space: int = 0
    seconds: float = 0.0
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if self.best_us and self.default_us:
            return self.default_us / self.best_us
        return None


class Guard:
    """Wraps the tuner's benchmark_config (looked up as a module global by BenchmarkWorker.tune): past the deadline
    it skips every config but the first of a batch size, turns compile or launch failures into the OutOfResources
    that tune() already skips, and keeps each measured time."""

    def __init__(self, tuner: types.ModuleType, deadline: float) -> None:
        self.original: Callable[..., float] = tuner.benchmark_config
        self.deadline = deadline
        base = tuner.triton.runtime.autotuner.OutOfResources

        class Skip(base):  # type: ignore[misc, valid-type]
            def __init__(self, why: str) -> None:
                Exception.__init__(self, why)

        self.skip: type[Exception] = Skip
        self.oom: type[Exception] = base
        self.times: dict[tuple[int, tuple[int, ...]], float] = {}
        self.m = self.ran = self.skipped = self.failed = 0
        tuner.benchmark_config = self

    def start(self, m: int) -> None:
        self.m, self.ran, self.skipped, self.failed = m, 0, 0, 0

    def __call__(self, config: Mapping[str, int], num_tokens: int, *args: Any, **kwargs: Any) -> float:
        if self.ran and time.monotonic() > self.deadline:
            self.skipped += 1
            raise self.skip("budget")
        try:
            us = self.original(config, num_tokens, *args, **kwargs)
        except self.oom:
            self.failed += 1
            raise
        except Exception as e:  # a config that does not compile or launch: skip it like tune() skips OutOfResources
            self.failed += 1
            print(f"  M={num_tokens} {tile(config)}: {type(e).__name__}: {str(e)[:160]}", flush=True)
            raise self.skip(str(e)) from e
        self.ran += 1
        self.times[(num_tokens, config_key(config))] = us
        return us


def baseline_config(tuner: types.ModuleType, m: int, shape: MoEShape) -> Config:
    """What vLLM runs for m without our file: its shipped table for this GPU if any (nearest key, as
    try_get_optimal_moe_config picks), else get_default_config(M, E, N=w2's K, K=hidden, top-k, dtype None)."""
    shipped = tuner.get_moe_configs.__wrapped__(shape.experts, shape.intermediate, None)
    if shipped:
        return clean(shipped[min(shipped, key=lambda k: abs(k - m))])
    return clean(tuner.get_default_config(m, shape.experts, shape.intermediate, shape.hidden, shape.topk, None))


def save(tuner: types.ModuleType, results: Mapping[int, Result], problem: tuple[Any, ...], out: Path) -> None:
    """The table through the tuner's save_configs (vLLM's file name and format, triton_version first), keys sorted."""
    table = {m: tuner.sort_config(results[m].config) for m in sorted(results)}
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Writing best config to ..." every time
        tuner.save_configs(table, *problem, False, None, str(out))


def fmt_us(us: float | None) -> str:
    return f"{us:8.1f} us" if us is not None else "       - us"


def result_line(r: Result) -> str:
    sp = f"x{r.speedup:.2f}" if r.speedup else "  -  "
    state = "tuned" if r.tuned else "vLLM default"
    return (
        f"M={r.m:<5} best {fmt_us(r.best_us)}  vLLM default {fmt_us(r.default_us)}  {sp:>6}  {tile(r.config):<24} "
        f"({state}; {r.tried}/{r.space} configs, {r.seconds:.1f} s){' ' + r.note if r.note else ''}"
    )


def plan(shape: MoEShape, sizes: Sequence[int], max_configs: int | None) -> str:
    lines = [
        f"shape: E={shape.experts} top-{shape.topk} N(w2 K)={shape.intermediate} hidden={shape.hidden}; "
        f"GEMMs (N, K): {shape.gemms}"
    ]
    for m in sizes:
        space = search_space(m, shape, max_configs)
        lines.append(
            f"M={m:<5} t={shape.tokens_per_expert(m):6.1f} BLOCK_M<={block_m_cap(m, shape):<3} "
            f"{len(space):2d} + vLLM default: " + ", ".join(tile(c) for c in space)
        )
    lines.append(f"{len(union_space(shape, sizes))} distinct configs (+ vLLM's defaults) over {len(sizes)} batch sizes")
    return "\n".join(lines)


def resolve_shape(args: argparse.Namespace) -> MoEShape:
    if args.model:
        base = shape_from_config(json.loads((Path(args.model) / "config.json").read_text()), args.tp_size)
    else:
        base = shape_from_config({"language_config": dict(zip(DSOCR_KEYS, DSOCR.values(), strict=True))}, args.tp_size)
    return MoEShape(
        args.num_experts or base.experts,
        args.topk or base.topk,
        args.intermediate_size or base.intermediate,
        args.hidden_size or base.hidden,
    )


def run(args: argparse.Namespace) -> int:
    shape = resolve_shape(args)
    sizes = list(dict.fromkeys(args.batch_sizes or BATCH_SIZES))
    print(plan(shape, sizes, args.max_configs), flush=True)
    tuner_path = Path(args.tuner)
    digest = sha256(tuner_path) if tuner_path.is_file() else "missing"
    print(
        f"tuner {tuner_path} sha256 {digest[:16]}"
        f"{' = vLLM 0.26.0' if digest == TUNER_SHA256 else ' (not the vLLM 0.26.0 file)'}"
    )
    if os.environ.pop("VLLM_TUNED_CONFIG_FOLDER", None):
        print("VLLM_TUNED_CONFIG_FOLDER unset for this run: the baseline is vLLM without our table")
    standin = install_ray_standin()
    t = time.monotonic()
    tuner = load_tuner(tuner_path)
    print(f"vLLM's tuner imported in {time.monotonic() - t:.1f} s; ray: {'in-process stand-in' if standin else 'real'}")
    # vLLM's own entry point builds its space here; anything that calls it now gets the pruned one.
    tuner.get_configs_compute_bound = lambda use_fp16=True, block_quant_shape=None: union_space(shape, sizes)
    # tune() ends with clear_triton_cache(): two full gc.collect() passes (~0.5 s with vLLM loaded) and an
    # empty_cache, per batch size, against OOM with hundreds of experts. 64 experts need none of it.
    tuner.clear_triton_cache = lambda: None
    if args.dry_run:
        print(
            f"dry run: {config_file_name(shape.experts, shape.intermediate, args.device_name)} would be written "
            f"to {args.out} for {args.device_name!r}"
        )
        return 0

    torch = tuner.torch
    out = Path(args.out)
    # benchmark_config's and tune's arguments after M: E, 2 * N, hidden, top-k, dtype, use_fp8_w8a8, use_int8_w8a16
    # (then use_int4_w4a16), as vLLM's main passes them for a bf16 model.
    problem = (shape.experts, shape.shard_intermediate_size, shape.hidden, shape.topk, torch.bfloat16, False, False)
    guard = Guard(tuner, START + args.budget_s - args.reserve_s)
    tuner.ray.init()
    worker = tuner.BenchmarkWorker.remote(args.seed)  # sets the default device to cuda and seeds, like vLLM's main
    torch.set_default_device("cuda")  # for our own re-timing calls (already so in-process)
    device = torch.cuda.get_device_name()
    results = {m: Result(m) for m in sizes}
    for r in results.values():
        r.config = r.default_config = baseline_config(tuner, r.m, shape)

    for r in results.values():
        if time.monotonic() > guard.deadline:
            r.note = "not tuned: budget"
        else:
            tune_one(tuner, worker, guard, r, problem, search_space(r.m, shape, args.max_configs), args.verify_iters)
            print(result_line(r), flush=True)
        save(tuner, results, problem, out)  # after every batch size: a run killed at the wall limit keeps a table

    name = tuner.get_config_file_name(shape.experts, shape.intermediate, None)
    ours = config_file_name(shape.experts, shape.intermediate, device)
    os.environ["VLLM_TUNED_CONFIG_FOLDER"] = str(out.resolve())
    found = tuner.get_moe_configs.__wrapped__(shape.experts, shape.intermediate, None)
    lookup_ok = (out / name).is_file() and found is not None and sorted(found) == sorted(results)
    print(f"\nwrote {out / name}")
    print(f"  vLLM's get_config_file_name: {name}")
    print(f"  ours for {device!r}: {ours}{'' if name == ours else '  <- DIFFERENT: check config_file_name'}")
    print(f"  vLLM's get_moe_configs, VLLM_TUNED_CONFIG_FOLDER={out}: ", end="")
    print(f"reads all {len(results)} batch sizes" if lookup_ok else "DOES NOT READ THIS TABLE")
    iters = args.verify_iters or 20
    print(f"\nper batch size (best = the file's config; benchmark_config, {iters} x 10 launches each):")
    for m in sorted(results):
        print(result_line(results[m]))
    total = time.monotonic() - START
    print(f"\n{sum(r.tuned for r in results.values())}/{len(results)} batch sizes tuned, total {total:.1f} s")
    if args.report:
        report = {
            "device": device,
            "file": name,
            "file_name_check": name == ours,
            "lookup_ok": lookup_ok,
            "tuner": str(tuner_path),
            "tuner_sha256": digest,
            "triton": getattr(tuner.triton, "__version__", None),
            "shape": asdict(shape),
            "total_s": round(total, 1),
            "budget_s": args.budget_s,
            "results": [{**asdict(results[m]), "speedup": results[m].speedup} for m in sorted(results)],
        }
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1))
    return 0 if lookup_ok else 1


def tune_one(
    tuner: types.ModuleType,
    worker: Any,
    guard: Guard,
    r: Result,
    problem: tuple[Any, ...],
    candidates: list[Config],
    verify_iters: int,
) -> None:
    """BenchmarkWorker.tune over vLLM's config for r.m then the candidates; the winner goes in the file only if it
    beats vLLM's config when both are timed again."""
    space = dedup([r.default_config, *candidates])
    r.space = len(space)
    guard.start(r.m)
    t = time.monotonic()
    try:
        best = clean(tuner.ray.get(worker.tune.remote(r.m, *problem, False, space, None, False)))
    except Exception as e:  # every config failed, or the tuner broke: vLLM's config stays
        r.note = f"not tuned: {type(e).__name__}: {str(e)[:120]}"
        r.tried, r.seconds = guard.ran, time.monotonic() - t
        return
    r.tried = guard.ran
    same = config_key(best) == config_key(r.default_config)
    r.default_us = guard.times.get((r.m, config_key(r.default_config)))
    r.best_us = guard.times.get((r.m, config_key(best)))
    if verify_iters:  # both again, back to back, with more iterations: the numbers printed and the final pick
        r.default_us = guard.original(r.default_config, r.m, *problem, num_iters=verify_iters)
        r.best_us = r.default_us if same else guard.original(best, r.m, *problem, num_iters=verify_iters)
    if same:  # tuned only if something else was timed against it
        r.tuned, r.note = r.tried > 1, "vLLM's default won" if r.tried > 1 else "only vLLM's default timed"
    elif r.best_us is not None and r.default_us is not None and r.best_us >= r.default_us:
        r.best_us, r.note = r.default_us, "winner not faster when re-timed: vLLM's default kept"
    else:
        r.config, r.tuned = best, True
    if guard.skipped:
        r.note = "; ".join(x for x in (r.note, f"budget cut {guard.skipped} configs") if x)
    r.seconds = time.monotonic() - t


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--tuner", default=str(TUNER), help="vLLM's benchmarks/kernels/benchmark_moe.py (default: %(default)s)"
    )
    p.add_argument("--out", default=str(OUT), help="folder for the JSON (default: %(default)s)")
    p.add_argument("--model", help="model folder whose config.json gives the shape (else DeepSeek-OCR's)")
    p.add_argument("--num-experts", "-E", type=int, help=f"routed experts (default {DSOCR['experts']})")
    p.add_argument("--topk", type=int, help=f"experts per token (default {DSOCR['topk']})")
    p.add_argument(
        "--intermediate-size", type=int, help=f"moe_intermediate_size per TP shard (default {DSOCR['intermediate']})"
    )
    p.add_argument("--hidden-size", type=int, help=f"hidden size (default {DSOCR['hidden']})")
    p.add_argument("--tp-size", type=int, default=1, help="tensor parallel size the engine runs (default 1)")
    p.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        help=f"tokens per step to tune, in priority order (default {' '.join(map(str, BATCH_SIZES))})",
    )
    p.add_argument(
        "--max-configs", type=int, help="at most this many candidates per batch size (besides vLLM's default)"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=210.0,
        help="wall seconds from start, imports and Triton compiles included (default %(default)s)",
    )
    p.add_argument(
        "--reserve-s",
        type=float,
        default=12.0,
        help="of the budget, kept for the last timings and the file (default %(default)s)",
    )
    p.add_argument(
        "--verify-iters",
        type=int,
        default=100,
        help="re-time winner and default with this many iterations (0: tune's 20)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", help="also write the per-batch-size results as JSON here")
    p.add_argument("--dry-run", action="store_true", help="print the plan and import the tuner; no GPU work")
    p.add_argument(
        "--device-name", default="NVIDIA H100 80GB HBM3", help="for --dry-run's file name (default %(default)s)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
