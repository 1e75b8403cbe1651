"""UINT8_PIXELS: uint8 views normalised on the device equal the float views vLLM's processor makes (bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from engines import vllm_pixels


def processor_view(image: Image.Image) -> torch.Tensor:
    """What vLLM's DeepSeek-OCR processor makes of one view: torchvision ToTensor + Normalize(0.5, 0.5), replayed
    (float32: bytes / 255, then - mean, / std, as torchvision computes them)."""
    x = torch.from_numpy(np.array(image.convert("RGB"), copy=True)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    mean = torch.tensor([0.5] * 3)[:, None, None]
    return x.sub(mean).div(mean)


def page(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_normalised_uint8_views_equal_the_processors_float_views(dtype):
    every_byte = Image.fromarray(np.arange(256 * 3, dtype=np.uint16).reshape(16, 16, 3).astype(np.uint8))
    for im in (every_byte, page(1, 640, 640), ImageOps.pad(page(2, 300, 500), (1024, 1024), color=(127, 127, 127))):
        view = vllm_pixels.to_uint8(im)
        assert view.dtype == torch.uint8 and view.shape == (3, im.height, im.width)
        got = vllm_pixels.normalise(view, dtype)
        assert got.dtype == dtype
        assert torch.equal(got, processor_view(im).to(dtype))  # what vLLM casts the float views to


def test_shortcuts_that_look_equal_are_not():
    """Other spellings of the same formula give other bits (the test above would catch them)."""
    x = torch.arange(256, dtype=torch.uint8)
    ref = processor_view(Image.fromarray(x.reshape(16, 16, 1).expand(16, 16, 3).numpy()))
    assert not torch.equal(x.float().mul(2 / 255).sub(1), ref[0].flatten())  # one multiply
    assert not torch.equal((x.to(torch.bfloat16) / 127.5 - 1), ref[0].flatten().bfloat16())  # arithmetic in bf16


def test_float_views_and_lists_pass_through():
    floats = torch.rand(2, 3, 8, 8)
    assert vllm_pixels.normalise(floats, torch.bfloat16) is floats  # a processor that emits floats: untouched
    mixed = [torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)]
    out = vllm_pixels.normalise(mixed, torch.float32)  # views of different sizes arrive as a list
    assert isinstance(out, list) and out[0].unique().tolist() == [-1.0] and out[1].unique().tolist() == [1.0]
    kw = {"pixel_values": mixed[0], "images_crop": mixed[1], "images_spatial_crop": torch.tensor([[1, 1]])}
    got = vllm_pixels.normalise_inputs(kw, torch.float32)
    assert got["images_spatial_crop"] is kw["images_spatial_crop"]  # only view tensors are touched
    assert got["pixel_values"].dtype == torch.float32 and got["images_crop"].dtype == torch.float32


def test_empty_view_tensors_become_uint8_so_batching_never_promotes_to_float():
    outputs = {"pixel_values": torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "images_crop": torch.zeros((0, 3, 4, 4))}
    vllm_pixels.uint8_empties(outputs)
    assert outputs["images_crop"].dtype == torch.uint8
    tiles = torch.full((2, 3, 4, 4), 200, dtype=torch.uint8)
    assert torch.cat([outputs["images_crop"], tiles]).dtype == torch.uint8
    assert torch.cat([torch.zeros((0, 3, 4, 4)), tiles]).dtype == torch.float32  # what would happen otherwise


class _Transform:  # the attributes of vLLM's ImageTransform that the swap reads
    def __init__(self, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), normalize=True):
        self.mean, self.std, self.normalize = mean, std, normalize


def test_only_the_transform_normalise_reproduces_is_swapped(monkeypatch):
    assert vllm_pixels.swappable(_Transform())
    assert not vllm_pixels.swappable(_Transform(mean=(0.48, 0.46, 0.41)))
    assert not vllm_pixels.swappable(_Transform(normalize=False))
    swapped = vllm_pixels.Uint8Transform(_Transform())
    assert swapped.mean == (0.5, 0.5, 0.5)  # the processor pads the global view with mean * 255
    assert swapped(Image.new("RGB", (5, 3), (1, 2, 3))).shape == (3, 3, 5)
    monkeypatch.setenv("UINT8_PIXELS", "1")
    assert vllm_pixels.enabled()
    monkeypatch.setenv("UINT8_PIXELS", "0")
    assert not vllm_pixels.enabled()
