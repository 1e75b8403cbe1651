"""On a machine with vLLM: UINT8_PIXELS and DEVICE_VIEWS give the vision encoder the same inputs as vLLM's float
processor.

For every DeepSeek-OCR mode and a tall, a wide, a square and a small page, vLLM's own DeepseekOCRProcessor
runs twice on the same page: as shipped (float views), and with the uint8 transform engines/vllm_modes.py swaps
in. The uint8 views, normalised on the GPU (engines/vllm_pixels.normalise), must equal the float views cast to
the model dtype bit for bit, and the token ids must be the same. DEVICE_VIEWS: the page's pixels and plan
(engines/vllm_modes.pages_without_views), cut into views on the GPU (engines/vllm_views.expand), normalised, must
equal the same float views, with the same token ids and tile grid. Prints one RESULT line; exit 1 on a mismatch.

    python bench/pixels_check.py --model /tmp/dsocr
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engines import vllm_pixels
from process.image_process import MODES

SHAPES = {"tall": (1240, 1754), "wide": (1754, 1240), "square": (1400, 1400), "small": (500, 380)}


def page(w: int, h: int) -> Image.Image:
    im = Image.new("RGB", (w, h), (250, 248, 240))
    d = ImageDraw.Draw(im)
    for y in range(20, h - 20, 24):
        d.text((20, y), f"line {y} the quick brown fox {w}x{h}", fill=(10, 20, 30))
    return im


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/dsocr")
    args = ap.parse_args()
    from transformers import AutoTokenizer
    from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

    from engines import vllm_views
    from engines.vllm_modes import pages_without_views

    tok = AutoTokenizer.from_pretrained(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    checked, bad, ms = 0, [], {"float": 0.0, "uint8": 0.0, "pages": 0.0, "device_views": 0.0}
    for mode in MODES.values():
        kw = {"base_size": mode.base_size, "image_size": mode.image_size, "strategy": "v1"}
        floats, uint8 = DeepseekOCRProcessor(tokenizer=tok, **kw), DeepseekOCRProcessor(tokenizer=tok, **kw)
        assert vllm_pixels.swappable(uint8.image_transform)
        uint8.image_transform = vllm_pixels.Uint8Transform(uint8.image_transform)
        for shape, (w, h) in SHAPES.items():
            im = page(w, h)
            outs = {}
            for name, proc in (("float", floats), ("uint8", uint8)):
                t0 = time.perf_counter()
                outs[name] = dict(proc(prompt="<image>\nFree OCR. ", images=[im], crop_mode=mode.crop_mode))
                ms[name] += (time.perf_counter() - t0) * 1000
            vllm_pixels.uint8_empties(outs["uint8"])
            for key in vllm_pixels.PIXEL_KEYS:
                want = outs["float"][key].to(device, torch.bfloat16)
                got = vllm_pixels.normalise(outs["uint8"][key].to(device), torch.bfloat16)
                if outs["uint8"][key].dtype != torch.uint8 or got.shape != want.shape or not torch.equal(got, want):
                    bad.append(f"{mode.name}/{shape}/{key}")
            if not torch.equal(outs["float"]["input_ids"], outs["uint8"]["input_ids"]):
                bad.append(f"{mode.name}/{shape}/input_ids")
            t0 = time.perf_counter()
            pages = dict(pages_without_views(floats, "<image>\nFree OCR. ", [im], mode.crop_mode))
            t1 = time.perf_counter()
            kwargs = {k: v.to(device) if k == vllm_views.PAGE else v for k, v in pages.items()}
            vllm_views.expand(kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            ms["pages"] += (t1 - t0) * 1000
            ms["device_views"] += (time.perf_counter() - t1) * 1000
            for key in vllm_pixels.PIXEL_KEYS:
                want = outs["float"][key].to(device, torch.bfloat16)
                got = vllm_pixels.normalise(kwargs[key], torch.bfloat16)
                if got.shape != want.shape or not torch.equal(got, want):
                    bad.append(f"{mode.name}/{shape}/device_views/{key}")
            for key in ("input_ids", "images_spatial_crop"):
                if not torch.equal(outs["float"][key], kwargs[key]):
                    bad.append(f"{mode.name}/{shape}/device_views/{key}")
            checked += 1
    print("RESULT", json.dumps({
        "kind": "pixels_check", "device": device, "pages": checked, "mismatches": bad,
        "processor_ms_float": round(ms["float"], 1), "processor_ms_uint8": round(ms["uint8"], 1),
        "uint8_time_ratio": round(ms["uint8"] / ms["float"], 3),
        "pages_ms": round(ms["pages"], 1), "device_views_ms": round(ms["device_views"], 1),
    }), flush=True)  # fmt: skip
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
