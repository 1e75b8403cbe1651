"""bench/gpu_bench.py brings each managed `vllm serve` child's log back beside its own (the child logs which MoE
config it read), keeping only the tail of a long one."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gpu_bench import keep_child_logs


def test_each_childs_log_tail_is_kept_as_vllm_serve_n(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    first.write_bytes(b"early lines " * 10 + b"Using configuration from E=64.json")
    second.write_text("child two")
    children = [{"log": str(first)}, {"log": str(second)}, {"log": str(tmp_path / "gone.log")}]
    keep_child_logs(children, out, keep=34)
    assert sorted(p.name for p in out.iterdir()) == ["vllm_serve_0.log", "vllm_serve_1.log"]
    assert (out / "vllm_serve_0.log").read_text() == "Using configuration from E=64.json"
    assert (out / "vllm_serve_1.log").read_text() == "child two"


def test_one_child_or_none(tmp_path):
    log = tmp_path / "child.log"
    log.write_text("one child")
    keep_child_logs([{"log": str(log)}], tmp_path)  # already beside the bench's log: nothing to copy
    keep_child_logs([], tmp_path)  # the in-process engine: no children
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.log"]
    out = tmp_path / "out"
    out.mkdir()
    keep_child_logs([{"log": str(log)}], out)
    assert (out / "vllm_serve_0.log").read_text() == "one child"
