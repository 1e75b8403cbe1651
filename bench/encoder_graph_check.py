"""On a machine with vLLM: do vLLM's encoder CUDA graphs (ENCODER_CUDAGRAPH) give the language model the same image
embeddings as the eager encoder?

The engine runs with `cudagraph_mm_encoder` on, in this process. Every call of its encoder graph manager is wrapped:
the graph's per-image outputs are kept as returned (views into the graph's buffers, if that is what it returns), and
the same step's kwargs go through the model's eager `embed_multimodal` twice, vLLM's per-image loop and our batched
encoder (BATCHED_ENCODER=1, batched like the graphs). The comparison runs at the next encoder call and at the end,
so a graph output overwritten by a later replay would show. Per image: relative L2 difference graph vs eager, graph
vs batched eager and batched eager vs eager, and how far each graph output is from the eager output of the nearest
*other* page of its shape (the gap a wrong image order or a mis-assembled grid would leave; the vision weights are
re-drawn at a usual scale first, so that pages differ). Pages: A4, wide, square and small, every mode, mixed in the
same steps. Prints one RESULT line; exit 1 if a graph output is further from its eager output than MAX_REL, or
nearer another page's.

    python bench/encoder_graph_check.py --model /tmp/dsocr
    python bench/encoder_graph_check.py --model /tmp/dsocr --dummy-vision   # vLLM's dummy weights as they are
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from process.image_process import MODES

PROMPT = "<image>\n<|grounding|>Convert the document to markdown. "
SHAPES = {"a4": (1240, 1754), "wide": (1754, 1240), "square": (1400, 1400), "small": (500, 380)}
MAX_REL = 0.05  # bf16 keeps 8 bits of mantissa: rounding differences stay near 2^-8 relative per value


def page(p: int, w: int, h: int) -> Image.Image:
    im = Image.new("RGB", (w, h), (255 - p % 7, 250, 245))
    d = ImageDraw.Draw(im)
    for y in range(40, h - 40, 26):
        d.text((40 + (p * 13) % 50, y), f"page {p} line {y} lorem ipsum {p * y} dolor sit amet", fill=(p % 40, 0, 0))
    if p % 3 == 0:
        d.rectangle((w // 4, h // 3, w // 2, h // 2), outline="black", width=5)
    return im


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@dataclass
class Checker:
    """Wraps the encoder graph manager's `execute`; compares its outputs with the eager encoder's, one call late."""

    model: object
    pending: list = field(default_factory=list)
    rows: list = field(default_factory=list)

    def wrap(self, manager) -> None:
        run = manager.execute

        def execute(mm_kwargs):
            self.flush()
            out = run(mm_kwargs)
            if out is None:
                return out
            eager = self.eager(mm_kwargs, batched=False)
            batched = self.eager(mm_kwargs, batched=True)
            self.pending.append((list(out), eager, batched))
            return out

        manager.execute = execute

    def eager(self, mm_kwargs: dict, batched: bool) -> list[torch.Tensor]:
        os.environ["BATCHED_ENCODER"] = "1" if batched else "0"  # read by our model class at each call
        try:
            with torch.inference_mode():
                return [o.clone() for o in self.model.embed_multimodal(**mm_kwargs)]
        finally:
            os.environ["BATCHED_ENCODER"] = "0"

    def flush(self) -> None:
        for graph, eager, batched in self.pending:
            for i, (g, e, b) in enumerate(zip(graph, eager, batched, strict=True)):
                others = [rel(g, o) for j, o in enumerate(eager) if j != i and o.shape == g.shape]
                self.rows.append({
                    "images": len(graph), "tokens": int(g.shape[0]), "finite": bool(torch.isfinite(g).all()),
                    "graph_vs_eager": rel(g, e), "graph_vs_batched": rel(g, b), "batched_vs_eager": rel(b, e),
                    "bit_equal": bool(g.shape == e.shape and torch.equal(g, e)),
                    "nearest_other": min(others) if others else None,
                })  # fmt: skip
        self.pending.clear()


VISION = ("sam_model.", "vision_model.", "projector.")


@torch.no_grad()
def reinit_vision(model: torch.nn.Module, seed: int = 0) -> int:
    """Random weights of a usual scale for the vision encoder: vLLM's dummy weights (uniform, +-1e-3) give every
    page nearly the same embedding, so a mix-up between pages would not show. In place, so the captured graphs
    read them too. Norm weights 1, biases 0, the rest N(0, 0.02)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    n = 0
    for name, param in model.named_parameters():
        if not name.startswith(VISION):
            continue
        if param.dim() == 1:
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        else:
            param.normal_(0.0, 0.02, generator=gen)
        n += param.numel()
    return n


def install(worker, reinit: bool) -> int | None:
    """In the worker (collective_rpc): wrap its encoder graph manager; the vision weights re-drawn if asked."""
    runner = worker.model_runner
    manager = getattr(runner, "encoder_cudagraph_manager", None)
    if manager is None:
        return None
    model = runner.get_model()
    worker.graph_checker = Checker(model)
    worker.graph_checker.wrap(manager)
    return reinit_vision(model) if reinit else 0


def collect(worker) -> list[dict]:
    """In the worker: every comparison made so far."""
    worker.graph_checker.flush()
    return worker.graph_checker.rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/dsocr")
    ap.add_argument("--gundam-pages", type=int, default=48)
    ap.add_argument("--dummy-vision", action="store_true", help="keep vLLM's dummy vision weights (no re-draw)")
    args = ap.parse_args()
    # In this process, so BATCHED_ENCODER can be switched per call
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", DEVICE_VIEWS="1", UINT8_PIXELS="1", BATCHED_ENCODER="0")
    from vllm import LLM, SamplingParams

    from engines import vllm_register
    from engines.vllm_engine import engine_prompt_of

    vllm_register.register()
    llm = LLM(
        model=args.model, load_format="dummy", enable_prefix_caching=False, mm_processor_cache_gb=0,
        max_model_len=8192, max_num_seqs=256, gpu_memory_utilization=0.8, max_num_batched_tokens=16384,
        compilation_config={"cudagraph_mm_encoder": True},
    )  # fmt: skip
    redrawn = llm.collective_rpc(install, args=(not args.dummy_vision,))
    if any(n is None for n in redrawn):
        sys.exit("no encoder CUDA graph manager in the worker")
    prompts, p = [], 0
    for p in range(args.gundam_pages):  # Gundam, mostly A4: steps of many graph-sized images
        shape = list(SHAPES)[p % 8 if p % 8 < 4 else 0]
        prompts.append(engine_prompt_of(page(p, *SHAPES[shape]), PROMPT, MODES["gundam"]))
    for mode in MODES.values():  # every mode, every shape, in the same burst
        for w, h in SHAPES.values():
            p += 1
            prompts.append(engine_prompt_of(page(p, w, h), PROMPT, mode))
    t0 = time.time()
    llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0))
    rows = llm.collective_rpc(collect)[0]
    worst = max(rows, key=lambda r: r["graph_vs_eager"]) if rows else None
    nearest = [r["nearest_other"] for r in rows if r["nearest_other"] is not None]
    confused = [r for r in rows if r["nearest_other"] is not None and r["nearest_other"] <= r["graph_vs_eager"]]
    result = {
        "kind": "encoder-graph-check",
        "pages": len(prompts), "images_compared": len(rows), "encoder_calls_max_images": max(
            (r["images"] for r in rows), default=0),
        "vision_params_redrawn": redrawn[0], "bit_equal": sum(r["bit_equal"] for r in rows),
        "not_bit_equal_tokens": sorted({r["tokens"] for r in rows if not r["bit_equal"]}),
        "non_finite": sum(not r["finite"] for r in rows),
        "graph_vs_eager_max": max((r["graph_vs_eager"] for r in rows), default=None),
        "graph_vs_eager_mean": sum(r["graph_vs_eager"] for r in rows) / len(rows) if rows else None,
        "graph_vs_batched_max": max((r["graph_vs_batched"] for r in rows), default=None),
        "batched_vs_eager_max": max((r["batched_vs_eager"] for r in rows), default=None),
        "nearest_other_min": min(nearest, default=None), "confused": len(confused), "worst": worst,
        "seconds": round(time.time() - t0, 1),
    }  # fmt: skip
    print("RESULT", json.dumps(result), flush=True)
    ok = rows and worst["graph_vs_eager"] <= MAX_REL and not confused and all(r["finite"] for r in rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
