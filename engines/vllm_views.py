"""DEVICE_VIEWS: a page's views (global view and tiles) cut on the GPU, not in vLLM's API processes.

vLLM 0.26's DeepSeek-OCR processor resizes every page twice in Pillow (the tile grid and the padded global view):
40% of an API process's time under the 256-page burst on an H100 (py-spy, bench/RESULTS.md). With DEVICE_VIEWS the
mode-aware processor (engines/vllm_modes.py) sends the page itself as uint8 pixels ([H, W, 3]) with its plan (tile
grid, view and tile size, crop mode) and the model class makes the views on the GPU with process/pil_resize.py,
Pillow's arithmetic bit for bit, so the encoder sees the bytes the processor would have made (then
engines/vllm_pixels.py normalises them, as with UINT8_PIXELS). `expand` turns the step's pages into the kwargs
vLLM's own processor would have produced, so everything after it (encoder CUDA graphs, mixed modes) is unchanged.
Needs torch only (tested in CI without vLLM: tests/test_vllm_views.py).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image

from engines.vllm_encoder import int_rows
from process.pil_resize import pad, resize

PAGE = "page"  # the field with each page's uint8 pixels, [H, W, 3] as decoded (channels first on the GPU)
PLAN = "view_plan"  # per page: (base_size, image_size, crop_mode)
PAD_COLOR = (127, 127, 127)  # the processor's pad colour: int(0.5 * 255) per channel (mean 0.5)


def page_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A page's RGB pixels as the processor sends them: uint8 [H, W, 3], Pillow's own layout, so the API process
    copies the page once (Pillow's bytes); the GPU puts the channels first. (Converting an RGB page to RGB, and
    transposing it to [3, H, W] on the CPU, took a third of an API process's time per page: bench/RESULTS.md.)
    A page file read by engines/vllm_page_loader.py is that tensor already."""
    if isinstance(image, torch.Tensor):
        return image
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    with warnings.catch_warnings():  # Pillow's bytes are read-only; nothing writes to a page
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        return torch.from_numpy(np.asarray(rgb))


def page_size(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    """(width, height) of a Pillow page or of a [H, W, 3] page tensor."""
    if isinstance(image, torch.Tensor):
        return image.shape[1], image.shape[0]
    return image.size


def enabled() -> bool:
    """Whether the processor sends pages instead of views (DEVICE_VIEWS, set by the engine for vLLM's processes)."""
    return os.environ.get("DEVICE_VIEWS", "0") == "1"


def page_views(
    page: torch.Tensor, base_size: int, image_size: int, cropping: bool, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepseekOCRProcessor.tokenize_with_images's views of one page: the global view [3, B, B] and the tiles
    [n, 3, S, S] (n = 0 unless the grid has more than one tile), as uint8, on the page's device. `grid` is the
    processor's images_spatial_crop: (1, 1) for a page within one tile and for modes without cropping."""
    tiles_w, tiles_h = grid
    tiles = page.new_empty((0, 3, image_size, image_size))
    if tiles_w > 1 or tiles_h > 1:
        grid_px = resize(page, (image_size * tiles_w, image_size * tiles_h))
        rows = grid_px.unflatten(-2, (tiles_h, image_size)).unflatten(-1, (tiles_w, image_size))  # 3,th,S,tw,S
        tiles = rows.permute(1, 3, 0, 2, 4).reshape(tiles_h * tiles_w, 3, image_size, image_size)  # row-major
    view = page if cropping else resize(page, (image_size, image_size))
    return pad(view, (base_size, base_size), PAD_COLOR), tiles


def expand(kwargs: dict[str, object]) -> dict[str, object]:
    """The step's kwargs with `page` + `view_plan` replaced by vLLM's `pixel_values` (stacked when every view has
    one size, else a list) and `images_crop` (every tile in order, zero-padded at the bottom right to the step's
    largest tile size when sizes differ, as vLLM batches them). Changes `kwargs` in place (vLLM's encoder CUDA
    graph manager asks the model about one dict several times) and returns it; kwargs without pages pass."""
    if PAGE not in kwargs:
        return kwargs
    pages = kwargs.pop(PAGE)
    plans = int_rows(kwargs.pop(PLAN), 3)  # type: ignore[arg-type]
    grids = int_rows(kwargs["images_spatial_crop"])  # type: ignore[arg-type]
    pages = list(pages.unbind(0)) if isinstance(pages, torch.Tensor) else list(pages)  # type: ignore[arg-type]
    views, tiles = [], []
    for page, (base, size, crop), grid in zip(pages, plans, grids, strict=True):
        chw = page.permute(2, 0, 1).contiguous()  # [H, W, 3] as sent -> [3, H, W]
        view, page_tiles = page_views(chw, base, size, bool(crop), (grid[0], grid[1]))
        views.append(view)
        tiles.append(page_tiles)
    kwargs["pixel_values"] = torch.stack(views) if len({v.shape for v in views}) == 1 else views
    largest = max(plan[1] for plan in plans)
    padded = [t if t.shape[-1] == largest else _pad_tiles(t, largest) for t in tiles]
    kwargs["images_crop"] = torch.cat(padded)
    return kwargs


def _pad_tiles(tiles: torch.Tensor, size: int) -> torch.Tensor:
    out = tiles.new_zeros((tiles.shape[0], 3, size, size))
    out[..., : tiles.shape[-2], : tiles.shape[-1]] = tiles
    return out
