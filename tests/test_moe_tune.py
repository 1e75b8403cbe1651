"""bench/moe_tune.py without vLLM or a GPU: the file name vLLM 0.26 looks up, the shape from DeepSeek-OCR's config,
the pruned search space and batch sizes, the ray stand-in, and the whole run against a stand-in for vLLM's tuner."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import moe_tune
import pytest
from moe_tune import BATCH_SIZES, MoEShape, config_file_name, search_space, shape_from_config, union_space

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "moe_tune.py"


# Literal names from vLLM 0.26: get_config_file_name(64, 896, None) evaluated with vLLM's own code for these
# device names, and (A100, H100 with dtype parts aside) names of tables shipped in its fused_moe/configs/.
@pytest.mark.parametrize(
    ("device", "name"),
    [
        ("NVIDIA H100 80GB HBM3", "E=64,N=896,device_name=NVIDIA_H100_80GB_HBM3.json"),
        ("NVIDIA H200", "E=64,N=896,device_name=NVIDIA_H200.json"),
        ("NVIDIA H200 NVL", "E=64,N=896,device_name=NVIDIA_H200.json"),  # every H200 folds to NVIDIA_H200
        ("NVIDIA H100 PCIe", "E=64,N=896,device_name=NVIDIA_H100_PCIe.json"),
        ("NVIDIA A100-SXM4-80GB", "E=64,N=896,device_name=NVIDIA_A100-SXM4-80GB.json"),
    ],
)
def test_file_name_is_the_one_vllm_0_26_looks_up(device: str, name: str) -> None:
    assert config_file_name(64, 896, device) == name


def test_file_name_folds_slashes_and_runs_of_spaces() -> None:
    assert (
        config_file_name(8, 14336, "AMD Instinct  MI300X/OAM") == "E=8,N=14336,device_name=AMD_Instinct_MI300X_OAM.json"
    )
    assert config_file_name(64, 896, "NVIDIA GH200 480GB") == "E=64,N=896,device_name=NVIDIA_GH200_480GB.json"


def dsocr_config() -> dict:
    """DeepSeek-OCR's config.json as far as the shape goes (the language model nested, as in the real one)."""
    lang = {"n_routed_experts": 64, "num_experts_per_tok": 6, "moe_intermediate_size": 896, "hidden_size": 1280}
    return {"architectures": ["DeepseekOCRForCausalLM"], "language_config": lang, "hidden_size": 9999}


def test_shape_comes_from_the_nested_language_config() -> None:
    assert shape_from_config(dsocr_config()) == MoEShape(64, 6, 896, 1280)
    assert shape_from_config(dsocr_config(), tp_size=2) == MoEShape(64, 6, 448, 1280)
    flat = dict(dsocr_config()["language_config"], hidden_size=2048)  # a DeepSeek-V2-style flat config
    assert shape_from_config(flat).hidden == 2048
    with pytest.raises(ValueError, match="not divisible"):
        shape_from_config(dsocr_config(), tp_size=3)
    with pytest.raises(ValueError, match="n_routed_experts"):
        shape_from_config({"hidden_size": 1280})


def test_shape_gemms_are_the_two_layers_one_config_serves() -> None:
    s = MoEShape()
    assert s.gemms == ((1792, 1280), (1280, 896))
    assert s.shard_intermediate_size == 1792
    assert s.tokens_per_expert(128) == 12.0


def test_batch_sizes_cover_decode_and_prefill_chunks() -> None:
    keys = sorted(BATCH_SIZES)
    assert len(keys) == len(BATCH_SIZES)
    assert {1, 128, 512, 2048, 8192} <= set(keys)  # decode 1..512 seqs, AsyncLLM's 2048-token steps, vllm serve's 8192
    assert BATCH_SIZES[:3] == (128, 512, 2048)  # the steady states come first, before the budget can run out
    for m in range(1, 8193):  # vLLM picks the nearest key: never more than a third away
        nearest = min(keys, key=lambda k: abs(k - m))
        assert abs(nearest - m) <= m / 3, m


@pytest.mark.parametrize("m", BATCH_SIZES)
def test_search_space_is_small_valid_and_fits_the_shape(m: int) -> None:
    shape = MoEShape()
    space = search_space(m, shape)
    assert 4 <= len(space) <= 12
    assert len({moe_tune.config_key(c) for c in space}) == len(space)
    t = shape.tokens_per_expert(m)
    for c in space:
        assert set(c) == set(moe_tune.KEYS)
        assert 1280 % c["BLOCK_SIZE_K"] == 0 and 896 % c["BLOCK_SIZE_K"] == 0
        assert all(c[k] & (c[k] - 1) == 0 for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"))
        assert c["num_warps"] in (4, 8) and 2 <= c["num_stages"] <= 5
        assert c["BLOCK_SIZE_M"] == 16 or c["BLOCK_SIZE_M"] < 4 * t  # at most 3/4 of a tile's rows are padding
        smem = (c["BLOCK_SIZE_M"] + c["BLOCK_SIZE_N"]) * c["BLOCK_SIZE_K"] * 2 * c["num_stages"]
        assert smem <= 227 * 1024  # H100's shared memory per block
    if t <= 2:
        assert {c["BLOCK_SIZE_M"] for c in space} == {16}
    if m >= 2048:
        assert min(c["BLOCK_SIZE_M"] for c in space) >= 64
    assert len(search_space(m, shape, max_configs=3)) == 3


def test_whole_space_is_a_compile_budget_not_vllms_1920() -> None:
    assert 12 <= len(union_space(MoEShape(), BATCH_SIZES)) <= 30


def test_ray_standin_runs_benchmark_moe_style_calls_in_process() -> None:
    mods = moe_tune.ray_standin()
    ray = mods["ray"]

    @ray.remote(num_gpus=1)
    class Worker:
        def __init__(self, seed: int) -> None:
            self.seed = seed
            self.gpu = int(ray.get_gpu_ids()[0])

        def tune(self, m: int, space: list[int]) -> tuple[int, int, int]:
            return m, self.seed, sum(mods["ray.experimental.tqdm_ray"].tqdm(space))

    ray.init()
    assert int(ray.available_resources()["GPU"]) == 1
    workers = [Worker.remote(7) for _ in range(int(ray.available_resources()["GPU"]))]
    refs = [workers[0].tune.remote(m, [1, 2, 3]) for m in (1, 2)]
    assert ray.get(refs) == [(1, 7, 6), (2, 7, 6)]
    assert ray.get(workers[0].tune.remote(5, [])) == (5, 7, 0)
    assert mods["ray"].experimental.tqdm_ray is mods["ray.experimental.tqdm_ray"]


def test_nothing_heavy_is_imported_and_nothing_imports_it() -> None:
    code = "import sys, moe_tune; print(sorted(m for m in ('torch', 'vllm', 'triton', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "bench", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    ours = {SCRIPT, Path(__file__).resolve()}
    tops = [t for t in ROOT.iterdir() if not t.name.startswith(".") and t.name not in ("data", "out")]
    files = [f for t in tops for f in ([t] if t.suffix == ".py" else t.rglob("*.py") if t.is_dir() else [])]
    assert len(files) > 50
    assert [f.relative_to(ROOT).as_posix() for f in files if f not in ours and "moe_tune" in f.read_text()] == []


def test_cli_help() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--tuner", "--out", "--budget-s", "--max-configs", "--batch-sizes", "--dry-run"):
        assert flag in out.stdout


# A stand-in for vLLM 0.26's benchmarks/kernels/benchmark_moe.py with the same module names and signatures the run
# uses (ray imports, BenchmarkWorker.tune's loop and OutOfResources skip, sort_config, save_configs, the fused_moe
# names its star import brings). Kernel "times" come from a formula: 16x128x128 tiles win, BLOCK_N=32 fails to
# compile, and 8x?x? is slower when re-timed with 100 iterations than with tune's 20.
FAKE_TUNER = """
import functools, json, os, time, types
import ray
from ray.experimental.tqdm_ray import tqdm

class OutOfResources(Exception):
    def __init__(self, required, limit, name):
        super().__init__(name)

triton = types.SimpleNamespace(__version__="fake", runtime=types.SimpleNamespace(
    autotuner=types.SimpleNamespace(OutOfResources=OutOfResources)))
torch = types.SimpleNamespace(bfloat16="bf16", set_default_device=lambda d: None,
                              cuda=types.SimpleNamespace(get_device_name=lambda *a: "NVIDIA H200"))
SLOW = float(os.environ.get("FAKE_SLOW", "0"))

def get_config_file_name(E, N, dtype, block_shape=None):
    return f"E={E},N={N},device_name=NVIDIA_H200.json"

@functools.lru_cache
def get_moe_configs(E, N, dtype, block_n=None, block_k=None):
    folder = os.environ.get("VLLM_TUNED_CONFIG_FOLDER")
    path = os.path.join(folder or "/nonexistent", get_config_file_name(E, N, dtype))
    if not os.path.exists(path):
        return None
    cfg = json.load(open(path))
    cfg.pop("triton_version", None)
    return {int(k): v for k, v in cfg.items()}

def get_default_config(M, E, N, K, topk, dtype, block_shape=None):
    return {"BLOCK_SIZE_M": 16 if M <= 32 else 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128 if M <= 64 else 64,
            "GROUP_SIZE_M": 1, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}

def benchmark_config(config, num_tokens, num_experts, shard_intermediate_size, hidden_size, topk, dtype,
                     use_fp8_w8a8, use_int8_w8a16, use_int4_w4a16=False, num_iters=100, block_quant_shape=None,
                     use_deep_gemm=False):
    assert (num_experts, shard_intermediate_size, hidden_size, topk, dtype) == (64, 1792, 1280, 6, "bf16")
    assert not (use_fp8_w8a8 or use_int8_w8a16 or use_int4_w4a16 or block_quant_shape or use_deep_gemm)
    time.sleep(SLOW)
    if config["BLOCK_SIZE_N"] == 32:
        raise RuntimeError("PassManager::run failed")
    us = 50.0 + abs(config["BLOCK_SIZE_N"] - 128) / 8 + abs(config["BLOCK_SIZE_K"] - 128) / 8
    us += abs(config["BLOCK_SIZE_M"] - 16) / 4 + config["num_stages"] / 10 + (config["num_warps"] == 8)
    if num_tokens == 8 and num_iters == 100 and config["BLOCK_SIZE_N"] != 64:
        us += 100.0  # the winner of the short run loses the long one
    return us

def clear_triton_cache():
    raise AssertionError("the run replaces this")

@ray.remote(num_gpus=1)
class BenchmarkWorker:
    def __init__(self, seed):
        torch.set_default_device("cuda")
        self.device_id = int(ray.get_gpu_ids()[0])

    def tune(self, num_tokens, num_experts, shard_intermediate_size, hidden_size, topk, dtype, use_fp8_w8a8,
             use_int8_w8a16, use_int4_w4a16, search_space, block_quant_shape, use_deep_gemm):
        best_config, best_time = None, float("inf")
        for idx, config in enumerate(tqdm(search_space)):
            try:
                kernel_time = benchmark_config(config, num_tokens, num_experts, shard_intermediate_size, hidden_size,
                                               topk, dtype, use_fp8_w8a8, use_int8_w8a16, use_int4_w4a16,
                                               num_iters=20, block_quant_shape=block_quant_shape,
                                               use_deep_gemm=use_deep_gemm)
            except triton.runtime.autotuner.OutOfResources:
                continue
            if kernel_time < best_time:
                best_time, best_config = kernel_time, config
        clear_triton_cache()
        assert best_config is not None
        return best_config

def sort_config(config):
    return {k: config[k] for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps",
                                   "num_stages")}

def save_configs(configs, num_experts, shard_intermediate_size, hidden_size, topk, dtype, use_fp8_w8a8,
                 use_int8_w8a16, use_int4_w4a16, block_quant_shape, save_dir):
    filename = get_config_file_name(num_experts, shard_intermediate_size // 2, None, block_quant_shape)
    os.makedirs(save_dir, exist_ok=True)
    filename = os.path.join(save_dir, filename)
    print(f"Writing best config to {filename}...")
    with open(filename, "w") as f:
        json.dump({"triton_version": triton.__version__, **configs}, f, indent=4)
        f.write("\\n")
"""


def run_fake(tmp_path: Path, *args: str, slow: float = 0.0) -> tuple[subprocess.CompletedProcess, dict, dict]:
    (tmp_path / "fake_benchmark_moe.py").write_text(textwrap.dedent(FAKE_TUNER))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(dsocr_config()))
    out, report = tmp_path / "moe_configs", tmp_path / "report.json"
    cmd = [sys.executable, str(SCRIPT), "--tuner", str(tmp_path / "fake_benchmark_moe.py"), "--out", str(out)]
    cmd += ["--model", str(model), "--report", str(report), *args]
    env = {"PATH": "/usr/bin:/bin", "FAKE_SLOW": str(slow), "VLLM_TUNED_CONFIG_FOLDER": "/somewhere/else"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = json.loads((out / "E=64,N=896,device_name=NVIDIA_H200.json").read_text())
    return proc, table, json.loads(report.read_text())


def test_run_tunes_skips_broken_configs_and_keeps_vllms_when_not_faster(tmp_path: Path) -> None:
    proc, table, report = run_fake(tmp_path, "--batch-sizes", "128", "8", "2048", "--verify-iters", "100")
    assert "ray: in-process stand-in" in proc.stdout
    assert "PassManager::run failed" in proc.stdout  # BLOCK_N=32 failed to compile and was skipped, not fatal
    assert list(table) == ["triton_version", "8", "128", "2048"]  # vLLM's format, keys sorted
    assert table["triton_version"] == "fake"
    assert table["128"] == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1,
                            "num_warps": 4, "num_stages": 3}  # fmt: skip
    assert table["2048"]["BLOCK_SIZE_N"] == 128 and table["2048"]["BLOCK_SIZE_M"] == 64
    default_8 = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
                 "num_stages": 3}  # fmt: skip
    assert table["8"] == default_8  # its winner lost the re-timing: vLLM's default stays
    by_m = {r["m"]: r for r in report["results"]}
    assert by_m[128]["tuned"] and by_m[128]["speedup"] > 1.0
    assert by_m[128]["default_config"]["BLOCK_SIZE_M"] == 64  # the baseline is vLLM's get_default_config
    assert not by_m[8]["tuned"] and "re-timed" in by_m[8]["note"]
    assert report["lookup_ok"] and report["file"] == "E=64,N=896,device_name=NVIDIA_H200.json"
    assert report["file_name_check"]  # our name for "NVIDIA H200" is the one the (fake) vLLM function gave
    assert "VLLM_TUNED_CONFIG_FOLDER unset" in proc.stdout


def test_budget_guard_stops_early_and_still_writes_a_full_table(tmp_path: Path) -> None:
    _, table, report = run_fake(tmp_path, "--budget-s", "2", "--reserve-s", "0", slow=0.3)
    by_m = {r["m"]: r for r in report["results"]}
    assert set(by_m) == set(BATCH_SIZES) and set(table) == {"triton_version", *map(str, BATCH_SIZES)}
    first = by_m[BATCH_SIZES[0]]
    assert first["tried"] >= 1 and "budget cut" in first["note"]  # stopped inside the first batch size
    assert by_m[BATCH_SIZES[-1]]["note"] == "not tuned: budget"
    assert table["4"] == {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1,
                          "num_warps": 4, "num_stages": 3}  # fmt: skip
    assert report["total_s"] < 8
