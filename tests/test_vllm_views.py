"""DEVICE_VIEWS: views cut from the page with torch equal what vLLM's DeepSeek-OCR processor cuts with Pillow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from engines import vllm_views
from process.image_process import MODES, closest_ratio


def text_page(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (w, h), (250, 248, 240))
    d = ImageDraw.Draw(im)
    for y in range(20, h - 20, 22):
        d.text(
            (20 + int(rng.integers(0, 30)), y), f"line {y} {rng.integers(0, 1 << 30)} lorem ipsum", fill=(10, 10, 60)
        )
    d.rectangle((w // 3, h // 3, w // 2, h // 2), outline=(200, 30, 30), width=3)
    return im


def tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def processor_views(im: Image.Image, base: int, size: int, crop: bool) -> tuple[list[Image.Image], tuple[int, int]]:
    """tokenize_with_images's image steps (vLLM 0.26 deepseek_ocr.py), replayed with Pillow: tiles (if any) then
    the padded global view; the grid is what the processor puts in images_spatial_crop."""
    w, h = im.size
    tiles: list[Image.Image] = []
    if w <= size and h <= size:
        grid = (1, 1)
    elif crop:
        grid = closest_ratio(w, h, size)
        resized = im.resize((size * grid[0], size * grid[1]))
        for i in range(grid[0] * grid[1]):
            x, y = (i % grid[0]) * size, (i // grid[0]) * size
            tiles.append(resized.crop((x, y, x + size, y + size)))
    else:
        grid = (1, 1)
    view = im if crop else im.resize((size, size))
    glob = ImageOps.pad(view, (base, base), color=(127, 127, 127))
    return [glob, *tiles], grid


@pytest.mark.parametrize(
    ("mode", "size"),
    [("gundam", (700, 990)), ("gundam", (990, 700)), ("gundam", (600, 500)), ("base", (700, 990)),
     ("tiny", (800, 300)), ("small", (333, 517))],
)  # fmt: skip
def test_page_views_equal_the_processors(mode: str, size: tuple[int, int]) -> None:
    m = MODES[mode]
    im = text_page(*size)
    want, grid = processor_views(im, m.base_size, m.image_size, m.crop_mode)
    view, tiles = vllm_views.page_views(tensor(im), m.base_size, m.image_size, m.crop_mode, grid)
    assert torch.equal(view, tensor(want[0]))
    assert tiles.shape == (len(want) - 1, 3, m.image_size, m.image_size)
    for got, ref in zip(tiles, want[1:], strict=True):
        assert torch.equal(got, tensor(ref))


def test_a_page_travels_as_its_decoded_bytes() -> None:
    im = text_page(300, 200)
    page = vllm_views.page_tensor(im)
    assert page.dtype == torch.uint8 and page.shape == (200, 300, 3) and page.is_contiguous()
    assert torch.equal(page, torch.from_numpy(np.array(im)))
    for other in (im.convert("L"), im.convert("RGBA")):  # the processor's convert("RGB"), as vLLM's would do
        assert torch.equal(vllm_views.page_tensor(other), torch.from_numpy(np.array(other.convert("RGB"))))


def test_expand_builds_vllms_kwargs_for_one_mode() -> None:
    ims = [text_page(700, 990, 1), text_page(700, 990, 2)]
    m = MODES["gundam"]
    grids = [processor_views(im, m.base_size, m.image_size, True)[1] for im in ims]
    kwargs = {
        "page": torch.stack([vllm_views.page_tensor(im) for im in ims]),  # [n, H, W, 3], as the processor sends
        "view_plan": torch.tensor([[m.base_size, m.image_size, 1]] * 2),
        "images_spatial_crop": torch.tensor(grids),
        "tile_size": torch.tensor([m.image_size] * 2),
    }
    out = vllm_views.expand(kwargs)
    assert out is kwargs and "page" not in out and "view_plan" not in out
    assert isinstance(out["pixel_values"], torch.Tensor) and out["pixel_values"].shape == (2, 3, 1024, 1024)
    refs = [processor_views(im, m.base_size, m.image_size, True)[0] for im in ims]
    assert torch.equal(out["pixel_values"][1], tensor(refs[1][0]))
    all_tiles = [tensor(t) for r in refs for t in r[1:]]
    assert torch.equal(out["images_crop"], torch.stack(all_tiles))
    assert vllm_views.expand(out) is out  # idempotent: the manager asks about one dict several times


def test_expand_mixed_modes_pads_tiles_like_vllm() -> None:
    gundam, base = MODES["gundam"], MODES["base"]
    ims = [text_page(700, 990, 3), text_page(640, 480, 4)]
    plans = [(gundam.base_size, gundam.image_size, 1), (base.base_size, base.image_size, 0)]
    grids = [processor_views(ims[0], 1024, 640, True)[1], (1, 1)]
    out = vllm_views.expand(
        {
            "page": [vllm_views.page_tensor(im) for im in ims],
            "view_plan": torch.tensor(plans),
            "images_spatial_crop": torch.tensor(grids),
        }
    )
    tiles = out["images_crop"]
    assert tiles.shape[-1] == 1024  # the step's largest tile size (base's 1024 > gundam's 640)
    ref_tiles = processor_views(ims[0], 1024, 640, True)[0][1:]
    assert torch.equal(tiles[0, :, :640, :640], tensor(ref_tiles[0])) and int(tiles[0, :, 640:, :].sum()) == 0
    assert torch.equal(out["pixel_values"][1], tensor(processor_views(ims[1], 1024, 1024, False)[0][0]))


def test_kwargs_without_pages_pass() -> None:
    kwargs = {"pixel_values": torch.zeros(1, 3, 4, 4)}
    assert vllm_views.expand(kwargs) is kwargs and list(kwargs) == ["pixel_values"]
