"""Where a page's input-processing time goes, in the steps of vLLM 0.26's DeepSeek-OCR processor (Gundam).

`vllm/transformers_utils/processors/deepseek_ocr.py` turns each page into float32 tensors on the CPU: tiles
(resize + crop), the padded global view, ToTensor + Normalize(0.5, 0.5) per view, a stack, then the API
process serialises them to the engine core. This replays those steps with PIL and torch (no vLLM needed) on
an A4 page and prints milliseconds per step and the bytes per page, next to the alternative of shipping the
views as uint8 and normalising on the GPU (engines/vllm_pixels.py: UINT8_PIXELS, the same values). Ratios,
not absolute times, carry over to other machines.

    python bench/processor_cost.py --pages 10
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from process.image_process import MODES, plan_tiles


def page(w: int = 1240, h: int = 1754) -> Image.Image:
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    for y in range(60, h - 60, 28):
        d.text((60, y), f"line {y} lorem ipsum dolor sit amet consectetur", fill="black")
    return im


def to_float(view: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor then Normalize(0.5, 0.5), as the processor's ImageTransform."""
    x = torch.from_numpy(np.array(view)).permute(2, 0, 1).contiguous().float().div(255)
    return (x - 0.5) / 0.5


def to_uint8(view: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(view)).permute(2, 0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=10)
    args = ap.parse_args()
    mode = MODES["gundam"]
    im = page()
    plan = plan_tiles(im.width, im.height, mode)
    tw, th, s = plan.tiles_w, plan.tiles_h, mode.image_size
    ms: dict[str, float] = {}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        ms[name] = ms.get(name, 0.0) + (time.perf_counter() - t0) * 1000 / args.pages

    boxes = [((i % tw) * s, (i // tw) * s, (i % tw + 1) * s, (i // tw + 1) * s) for i in range(tw * th)]
    for _ in range(args.pages):
        with timed("tiles: resize + crop"):
            resized = im.resize((s * tw, s * th))
            tiles = [resized.crop(box) for box in boxes]
        with timed("global view: pad"):
            glob = ImageOps.pad(im, (mode.base_size, mode.base_size), color=(127, 127, 127))
        with timed("float32: ToTensor + Normalize"):
            views = [to_float(v) for v in [glob, *tiles]]
        with timed("float32: stack"):
            stacked = (torch.stack(views[:1]), torch.stack(views[1:]))
        with timed("float32: serialise"):
            blob = pickle.dumps(stacked, protocol=5)
        with timed("uint8: tensor + stack + serialise"):
            raw = pickle.dumps((torch.stack([to_uint8(glob)]), torch.stack([to_uint8(t) for t in tiles])), protocol=5)
    common = ms["tiles: resize + crop"] + ms["global view: pad"]
    floats = common + sum(v for k, v in ms.items() if k.startswith("float32"))
    uint8 = common + ms["uint8: tensor + stack + serialise"]
    print(json.dumps({
        "page": [im.width, im.height], "tiles": [tw, th], "ms_per_page": {k: round(v, 1) for k, v in ms.items()},
        "float32_path_ms": round(floats, 1), "uint8_path_ms": round(uint8, 1),
        "uint8_vs_float32_time": round(uint8 / floats, 2),
        "float32_mb_per_page": round(len(blob) / 1e6, 1), "uint8_mb_per_page": round(len(raw) / 1e6, 1),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
