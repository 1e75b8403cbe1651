"""A DeepSeek-OCR-2 model folder for vLLM's load_format='dummy', derived from a DeepSeek-OCR-1 one.

vLLM's DeepseekOCR2ForCausalLM builds its vision towers (SAM + Qwen2-as-encoder) from constants; from the
config it reads the architecture, the projector (Qwen2 encoder width 896 -> language width 1280), the
tile tag and the language model, which OCR-2 shares with OCR-1 (DeepSeek-3B-MoE).

    python bench/make_dummy_ocr2.py /tmp/dsocr /tmp/dsocr2
"""

import json
import shutil
import sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(src, dst, dirs_exist_ok=True)
cfg = json.loads((src / "config.json").read_text())
cfg["architectures"] = ["DeepseekOCR2ForCausalLM"]
cfg["_name_or_path"] = "deepseek-ai/DeepSeek-OCR-2"
cfg["projector_config"] = {**cfg["projector_config"], "input_dim": 896, "n_embed": 1280}
(dst / "config.json").write_text(json.dumps(cfg, indent=1))
print("DeepSeek-OCR-2 dummy folder ->", dst)
