"""DeepSeek-OCR's vision encoder over a whole engine step at once, for every resolution mode (opt-in:
BATCHED_ENCODER=1).

vLLM 0.26's eager encoder (`DeepseekOCRForCausalLM._pixel_values_to_embedding`) runs SAM + CLIP once per
image: a batch of 1 for the global view, then the image's tiles, with four device syncs per image (`.item()`).
Under a 256-page burst on an H100 the GPU was busy 42% of the time and 79% of the engine core's Python time
went to the encoder, so this runs the global views of all images of one size through SAM + CLIP in one batch
and all tiles of one size in another, with vLLM's per-image assembly (tile grid with a newline per row, global
view with a newline per row, view separator) from Python ints read once per step. Measured: 0.95x vLLM's loop
(7.47 vs 7.88 pages/s, same H100, back to back; bench/RESULTS.md): the per-image loop was not what idles the
GPU, so vLLM's stays the default.

vLLM hands the step's images as stacked tensors when every image has the same size. When images of different
modes share a step, its batched field (global views) falls back to a per-image list, which vLLM's own code does
not take (`torch.sum(list)`), and its flat field (tiles) zero-pads every tile to the largest tile size of the
step (640-px Gundam tiles inside 1024-px canvases next to Gundam-M's). `split_items` turns either form into
per-image pieces, cutting each image's tiles back to its own size (`tile_sizes`, a field our processor adds);
`mixed` says when a step needs that, so the mode-aware model class sends it here whatever BATCHED_ENCODER says.
Pure torch: importable and tested without vLLM (tests/test_vllm_encoder.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

# Views per SAM + CLIP pass. SAM's global-attention blocks materialise a [views, heads, T, T] bias (T = patches of
# a view), so memory grows with views x T^2. vLLM sizes the KV cache after profiling its own per-image loop,
# whose largest call is one 1024-px global view (or one image's tiles), and leaves little more free: a pass
# here stays within that (one 1024-px view, six 640-px tiles, sixteen 512-px views; a 1280-px view alone).
ATTENTION_BUDGET = (1024 // 16) ** 4


class Encoders(Protocol):
    """What the encoder needs of vLLM's DeepseekOCRForCausalLM."""

    sam_model: torch.nn.Module
    vision_model: torch.nn.Module
    projector: torch.nn.Module
    image_newline: torch.Tensor
    view_seperator: torch.Tensor


@dataclass
class Item:
    """One image of the step: its global view [3, S, S], its tiles [n, 3, s, s], its tile grid (w, h)."""

    view: torch.Tensor
    tiles: torch.Tensor
    grid: tuple[int, int]

    @property
    def tiled(self) -> bool:
        return _tile_count(self.grid) > 0


def _tile_count(grid: tuple[int, int]) -> int:
    """Tiles of an image with this grid: none unless it is cut into more than one (vLLM's `is_tiled`)."""
    w, h = grid
    return w * h if (w > 1 or h > 1) else 0


def split_items(
    pixel_values: torch.Tensor | Sequence[torch.Tensor],
    images_crop: torch.Tensor | Sequence[torch.Tensor],
    images_spatial_crop: torch.Tensor | Sequence[torch.Tensor],
    tile_sizes: torch.Tensor | Sequence[int] | None = None,
) -> list[Item]:
    """Per-image pieces from vLLM's batched kwargs (stacked tensors, per-image lists, or tiles zero-padded to the
    step's largest tile size, cut back to each image's `tile_sizes`)."""
    grids = [tuple(g) for g in int_rows(images_spatial_crop)]  # one host read for the step
    views = list(pixel_values) if not isinstance(pixel_values, torch.Tensor) else list(pixel_values.unbind(0))
    counts = [_tile_count(g) for g in grids]  # type: ignore[arg-type]
    if isinstance(images_crop, torch.Tensor):
        tiles = list(images_crop.split(counts)) if sum(counts) == images_crop.shape[0] else _empty_tiles(counts)
    else:
        tiles = list(images_crop)
    if not len(views) == len(tiles) == len(grids):
        raise ValueError(f"{len(views)} images, {len(tiles)} tile sets, {len(grids)} grids")
    if tile_sizes is not None:
        sizes = _ints(tile_sizes)
        tiles = [t[..., :s, :s] if t.numel() and t.shape[-1] > s else t for t, s in zip(tiles, sizes, strict=True)]
    return [Item(v, t, g) for v, t, g in zip(views, tiles, grids, strict=True)]  # type: ignore[arg-type]


def mixed(
    pixel_values: torch.Tensor | Sequence[torch.Tensor],
    images_crop: torch.Tensor | Sequence[torch.Tensor],
    images_spatial_crop: torch.Tensor | Sequence[torch.Tensor],
    tile_sizes: torch.Tensor | Sequence[int] | None,
) -> bool:
    """Whether a step holds images of different sizes (which vLLM's per-image loop cannot take)."""
    if not isinstance(pixel_values, torch.Tensor) or not isinstance(images_crop, torch.Tensor):
        return True
    if tile_sizes is None or images_crop.numel() == 0:
        return False
    sizes, width = _ints(tile_sizes), images_crop.shape[-1]
    if all(s == width for s in sizes):  # the usual step: no need to read the grids from the device
        return False
    tiled = [_tile_count(tuple(g)) > 0 for g in int_rows(images_spatial_crop)]  # type: ignore[arg-type]
    return any(t and s != width for t, s in zip(tiled, sizes, strict=True))


def sized(mm_kwargs: Mapping[str, object], view: int, tile: int) -> bool:
    """Whether every view of a step is `view` px and every tile `tile` px (the sizes vLLM captures its encoder
    CUDA graphs for: Gundam's 1024 / 640; untiled 1024-px views fit too)."""
    views, tiles = mm_kwargs.get("pixel_values"), mm_kwargs.get("images_crop")
    if not isinstance(views, torch.Tensor) or not isinstance(tiles, torch.Tensor):
        return False
    return views.shape[-1] == view and (tiles.numel() == 0 or tiles.shape[-1] == tile)


def _ints(values: torch.Tensor | Sequence[int]) -> list[int]:
    return [int(v) for v in (values.reshape(-1).tolist() if isinstance(values, torch.Tensor) else values)]


def int_rows(values: torch.Tensor | Sequence[torch.Tensor], width: int = 2) -> list[list[int]]:
    """Per-image rows of a batched field (a [n, width] tensor or one row per image) as Python ints: one host
    read for the step (tile grids, engines/vllm_views.py's view plans)."""
    if isinstance(values, torch.Tensor):
        return values.reshape(-1, width).tolist()
    return [torch.as_tensor(v).reshape(width).tolist() for v in values]


def _empty_tiles(counts: list[int]) -> list[torch.Tensor]:
    if any(counts):
        raise ValueError(f"tiles do not match the grids: {counts}")
    return [torch.empty(0) for _ in counts]


def _features(enc: Encoders, views: torch.Tensor) -> torch.Tensor:
    """SAM + CLIP + projector over a batch of same-size views -> [B, q*q, dim] (chunked)."""
    step = _chunk(views.shape[-1])
    out = []
    for chunk in views.split(step):
        sam = enc.sam_model(chunk)
        clip = enc.vision_model(chunk, sam)
        out.append(enc.projector(torch.cat((clip[:, 1:], sam.flatten(2).permute(0, 2, 1)), dim=-1)))
    return torch.cat(out) if len(out) > 1 else out[0]


def _chunk(side: int) -> int:
    """Views of `side` px per encoder pass (square views; 16-px patches)."""
    patches = (side // 16) ** 2
    return max(1, ATTENTION_BUDGET // max(1, patches * patches))


def _with_newlines(enc: Encoders, grid: torch.Tensor) -> torch.Tensor:
    """[rows, cols, dim] -> [rows * (cols + 1), dim]: vLLM's newline embedding after every row."""
    rows, _, dim = grid.shape
    return torch.cat([grid, enc.image_newline[None, None, :].expand(rows, 1, dim)], dim=1).reshape(-1, dim)


def _square(features: torch.Tensor) -> tuple[int, int]:
    side = math.isqrt(features.shape[-2])
    return side, features.shape[-1]


def encode(enc: Encoders, items: list[Item]) -> list[torch.Tensor]:
    """Per-image embeddings, exactly as vLLM's per-image loop builds them, from batched encoder passes."""
    global_feats: dict[int, torch.Tensor] = {}
    tile_feats: dict[int, torch.Tensor] = {}
    for group in _groups(range(len(items)), lambda i: tuple(items[i].view.shape)):
        global_feats.update(zip(group, _features(enc, torch.stack([items[i].view for i in group])), strict=True))
    tiled = [i for i, it in enumerate(items) if it.tiled]
    for group in _groups(tiled, lambda i: tuple(items[i].tiles.shape[1:])):
        feats = _features(enc, torch.cat([items[i].tiles for i in group]))
        tile_feats.update(zip(group, feats.split([items[i].tiles.shape[0] for i in group]), strict=True))
    return [_assemble(enc, it, global_feats[i], tile_feats.get(i)) for i, it in enumerate(items)]


def _assemble(enc: Encoders, item: Item, global_feats: torch.Tensor, tile_feats: torch.Tensor | None) -> torch.Tensor:
    """[tile grid with a newline per row] + [global view with a newline per row] + [view separator]."""
    side, dim = _square(global_feats)
    pieces = []
    if tile_feats is not None:
        w, h = item.grid
        q = _square(tile_feats)[0]
        grid = tile_feats.view(h, w, q, q, dim).permute(0, 2, 1, 3, 4).reshape(h * q, w * q, dim)
        pieces.append(_with_newlines(enc, grid))
    pieces.append(_with_newlines(enc, global_feats.view(side, side, dim)))
    pieces.append(enc.view_seperator[None, :])
    return torch.cat(pieces, dim=0)


def _groups(indexes: Iterable[int], key: Callable[[int], object]) -> list[list[int]]:
    """`indexes` grouped by key, in first-seen order."""
    groups: dict[object, list[int]] = {}
    for i in indexes:
        groups.setdefault(key(i), []).append(i)
    return list(groups.values())
