"""Page views cross from the processor to the vision encoder as uint8; the GPU normalises them.

vLLM 0.26's DeepSeek-OCR processor turns every view (global view and tiles) into a float tensor on the CPU
(torchvision ToTensor + Normalize(0.5, 0.5)), vLLM casts it to the model dtype, serialises it to the engine
core and copies it to the GPU. With UINT8_PIXELS the processor keeps each view as its uint8 RGB bytes (half
the bytes of bf16, a quarter of float32, and no float work on the API process's CPU: bench/processor_cost.py)
and the model classes of engines/vllm_modes.py map the bytes to the processor's values on the GPU (a table
made with the processor's own float operations), so the encoder sees bit-identical inputs. Tensors that are
already floats pass through: the model side needs no switch. Needs torch only (tested in CI without vLLM).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

PIXEL_KEYS = ("pixel_values", "images_crop")  # DeepSeek-OCR's view tensors in the multimodal kwargs
MEAN = STD = 0.5  # the processor's Normalize (DeepSeek-OCR and OCR-2)


def enabled() -> bool:
    """Whether the processor emits uint8 views (UINT8_PIXELS, set by the engine for vLLM's processes)."""
    return os.environ.get("UINT8_PIXELS", "0") == "1"


def to_uint8(image: Image.Image) -> torch.Tensor:
    """One view as [3, H, W] uint8: the processor's ImageTransform, without the float steps."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)  # a writable copy


class Uint8Transform:
    """Stands in for the processor's ImageTransform (which it reads `.mean` of, to pad the global view)."""

    def __init__(self, original: object):
        self.mean = getattr(original, "mean", (MEAN,) * 3)
        self.std = getattr(original, "std", (STD,) * 3)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_uint8(image)


def swappable(transform: object) -> bool:
    """Whether a processor's transform is the one `normalise` reproduces (ToTensor + Normalize(0.5, 0.5))."""
    return (
        getattr(transform, "normalize", False)
        and tuple(getattr(transform, "mean", ())) == (MEAN,) * 3
        and tuple(getattr(transform, "std", ())) == (STD,) * 3
    )


def uint8_empties(outputs: dict) -> None:
    """The processor's empty view tensors (an image without tiles) are float zeros: make them uint8, so that
    vLLM's batching (torch.cat over requests) never promotes other requests' uint8 views to floats."""
    for key in PIXEL_KEYS:
        x = outputs.get(key)
        if isinstance(x, torch.Tensor) and x.numel() == 0 and x.is_floating_point():
            outputs[key] = x.to(torch.uint8)


def normalise(x: object, dtype: torch.dtype) -> object:
    """torchvision's ToTensor + Normalize(0.5, 0.5), then the model dtype, on uint8 views: a lookup in a
    256-entry table computed on the CPU with those very operations (CUDA divides by a scalar through its
    reciprocal, which gives other bits). Float tensors pass through; lists (views of different sizes) are mapped."""
    if isinstance(x, (list, tuple)):
        return type(x)(normalise(t, dtype) for t in x)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        return x
    table = _table(dtype, x.device)
    return torch.index_select(table, 0, x.reshape(-1).int()).view(x.shape)


@functools.cache
def _table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    values = torch.arange(256, dtype=torch.float32).div(255).sub(MEAN).div(STD)  # on the CPU, as the processor
    return values.to(dtype).to(device)


def normalise_inputs(kwargs: Mapping[str, object], dtype: torch.dtype) -> dict[str, object]:
    """The multimodal kwargs with every view tensor normalised."""
    return {k: normalise(v, dtype) if k in PIXEL_KEYS else v for k, v in kwargs.items()}
