"""engines/vllm_encoder.py: the step-batched vision encoder builds exactly what vLLM's per-image loop builds.

The encoders are small real torch modules with DeepSeek-OCR's geometry (a 1024-px view -> a 16x16 grid, a
640-px tile -> 10x10: one cell per 64 px), so every mode's token count can be checked against our own
arithmetic (process/image_process.plan_tiles), which is what the placeholders are sized by.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines import vllm_encoder
from engines.vllm_encoder import Item, encode, split_items
from process.image_process import MODES, plan_tiles

DIM = 6


class Sam(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, kernel_size=64, stride=64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # [B, 4, S/64, S/64]


class Clip(torch.nn.Module):
    """Takes the image and SAM's features, returns [B, 1 + cells, 4] (a class token first), as vLLM's does."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, sam: torch.Tensor) -> torch.Tensor:
        tokens = self.lin(sam.flatten(2).transpose(1, 2)) + x.mean(dim=(1, 2, 3))[:, None, None]
        return torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)


class Encoders(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.sam_model, self.vision_model = Sam(), Clip()
        self.projector = torch.nn.Linear(8, DIM)
        self.image_newline = torch.randn(DIM)
        self.view_seperator = torch.randn(DIM)


def reference(enc: Encoders, view: torch.Tensor, tiles: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """vLLM 0.26's DeepseekOCRForCausalLM._pixel_values_to_embedding for one image, written out."""

    def feats(x: torch.Tensor) -> torch.Tensor:
        sam = enc.sam_model(x)
        clip = enc.vision_model(x, sam)
        return enc.projector(torch.cat((clip[:, 1:], sam.flatten(2).permute(0, 2, 1)), dim=-1))

    g = feats(view[None])
    _, hw, dim = g.shape
    side = int(hw**0.5)
    g = torch.cat([g.view(side, side, dim), enc.image_newline[None, None, :].expand(side, 1, dim)], dim=1)
    parts = [g.view(-1, dim)]
    if grid[0] > 1 or grid[1] > 1:
        local = feats(tiles)
        q = int(local.shape[1] ** 0.5)
        w, h = grid
        local = local.view(h, w, q, q, dim).permute(0, 2, 1, 3, 4).reshape(h * q, w * q, dim)
        local = torch.cat([local, enc.image_newline[None, None, :].expand(h * q, 1, dim)], dim=1)
        parts.insert(0, local.view(-1, dim))
    return torch.cat([*parts, enc.view_seperator[None, :]], dim=0)


def page(mode_name: str, width: int, height: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """What vLLM's processor gives for one page in a mode: the view, the tiles (none untiled), the grid."""
    mode = MODES[mode_name]
    plan = plan_tiles(width, height, mode)
    gen = torch.Generator().manual_seed(seed)
    view = torch.randn(3, mode.base_size, mode.base_size, generator=gen)
    n = plan.tiles_w * plan.tiles_h if (plan.tiles_w > 1 or plan.tiles_h > 1) else 0
    tiles = torch.randn(n, 3, mode.image_size, mode.image_size, generator=gen)
    return view, tiles, (plan.tiles_w, plan.tiles_h)


@torch.no_grad()
def test_a_stacked_gundam_step_matches_the_per_image_loop_and_our_token_arithmetic():
    enc = Encoders()
    shapes = [(1240, 1754), (600, 500), (1754, 1240), (2480, 800)]  # tall, small (untiled), wide, very wide
    pages = [page("gundam", w, h, i) for i, (w, h) in enumerate(shapes)]
    views = torch.stack([p[0] for p in pages])
    crops = torch.cat([p[1] for p in pages])  # vLLM's flat field: every tile of the step, in order
    grids = torch.tensor([p[2] for p in pages])
    out = encode(enc, split_items(views, crops, grids))
    assert len(out) == len(pages)
    for (w, h), (view, tiles, grid), emb in zip(shapes, pages, out, strict=True):
        assert emb.shape == (plan_tiles(w, h, MODES["gundam"]).image_tokens, DIM)
        torch.testing.assert_close(emb, reference(enc, view, tiles, grid))
    assert grids[1].tolist() == [1, 1] and out[1].shape[0] == 16 * 17 + 1  # the untiled page: global view only


def vllm_batched(per_image: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """vLLM 0.26's MultiModalBatchedField._reduce_data: a stack if every shape agrees, else the list."""
    return torch.stack(per_image) if len({t.shape for t in per_image}) == 1 else per_image


def vllm_flat(per_image: list[torch.Tensor]) -> torch.Tensor:
    """vLLM 0.26's MultiModalFlatField._reduce_data (dim 0): a concat if the other dims agree, else every tensor
    zero-padded to the largest size of each dim and concatenated (its "variable-length case")."""
    if len({t.shape[1:] for t in per_image}) == 1:
        return torch.cat(per_image)
    sizes = [max(t.shape[d] for t in per_image) for d in range(1, per_image[0].ndim)]
    out = torch.zeros(sum(t.shape[0] for t in per_image), *sizes, dtype=per_image[0].dtype)
    at = 0
    for t in per_image:
        out[(slice(at, at + t.shape[0]), *(slice(0, n) for n in t.shape[1:]))] = t
        at += t.shape[0]
    return out


@torch.no_grad()
def test_modes_mixed_in_one_step_as_vllm_batches_them():
    enc = Encoders()
    asked = [("gundam", 1240, 1754), ("tiny", 1240, 1754), ("large", 900, 1300), ("gundam_m", 1754, 1240),
             ("base", 1240, 1754), ("gundam", 1754, 1240), ("small", 300, 400)]  # fmt: skip
    pages = [page(m, w, h, i) for i, (m, w, h) in enumerate(asked)]
    views, crops = vllm_batched([p[0] for p in pages]), vllm_flat([p[1] for p in pages])
    grids, sizes = torch.tensor([p[2] for p in pages]), torch.tensor([MODES[m].image_size for m, _, _ in asked])
    # Every tile sits in a canvas as wide as the widest tile tensor of the step (Large's empty one: 1280 px).
    assert isinstance(views, list) and crops.shape[-1] == 1280
    assert vllm_encoder.mixed(views, crops, grids, sizes)
    out = encode(enc, split_items(views, crops, grids, sizes))
    for (mode, w, h), (view, tiles, grid), emb in zip(asked, pages, out, strict=True):
        assert emb.shape[0] == plan_tiles(w, h, MODES[mode]).image_tokens, mode
        torch.testing.assert_close(emb, reference(enc, view, tiles, grid))


def test_same_sized_global_views_with_padded_tiles_are_mixed_too():
    """Gundam and Base both have 1024-px global views (stacked), but Base's empty tile tensor is 1024 px wide."""
    gundam, base = page("gundam", 1240, 1754, 0), page("base", 1240, 1754, 1)
    views, crops = vllm_batched([gundam[0], base[0]]), vllm_flat([gundam[1], base[1]])
    grids, sizes = torch.tensor([gundam[2], base[2]]), torch.tensor([640, 1024])
    assert isinstance(views, torch.Tensor) and crops.shape[-1] == 1024
    assert vllm_encoder.mixed(views, crops, grids, sizes)
    items = split_items(views, crops, grids, sizes)
    assert torch.equal(items[0].tiles, gundam[1]) and items[1].tiles.numel() == 0


def test_a_step_of_one_mode_is_not_mixed():
    pages = [page("gundam", 1240, 1754, i) for i in range(3)] + [page("gundam", 600, 500, 9)]  # one untiled
    views, crops = vllm_batched([p[0] for p in pages]), vllm_flat([p[1] for p in pages])
    grids = torch.tensor([p[2] for p in pages])
    assert not vllm_encoder.mixed(views, crops, grids, torch.tensor([640] * 4))
    assert not vllm_encoder.mixed(views, crops, grids, None)  # a processor without the field: as vLLM sends it


@torch.no_grad()
def test_large_steps_are_chunked_without_changing_the_result(monkeypatch):
    import engines.vllm_encoder as mod

    enc = Encoders()
    pages = [page("gundam", 1240, 1754, i) for i in range(5)]
    items = split_items(torch.stack([p[0] for p in pages]), torch.cat([p[1] for p in pages]),
                        torch.tensor([p[2] for p in pages]))  # fmt: skip
    whole = encode(enc, items)
    assert [mod._chunk(s) for s in (1024, 640, 512, 1280)] == [1, 6, 16, 1]  # vLLM's own largest call, at most
    monkeypatch.setattr(mod, "ATTENTION_BUDGET", 2 * 4096**2)  # two 1024-px views (or 13 tiles) per pass
    for a, b in zip(whole, encode(enc, items), strict=True):
        torch.testing.assert_close(a, b)


def test_split_items_refuses_tiles_that_do_not_match_the_grids():
    views = torch.zeros(2, 3, 64, 64)
    with pytest.raises(ValueError, match="tiles do not match"):
        split_items(views, torch.zeros(5, 3, 64, 64), torch.tensor([[2, 3], [1, 1]]))
    items = split_items(views, torch.zeros(6, 3, 64, 64), torch.tensor([[2, 3], [1, 1]]))
    assert [it.tiles.shape[0] for it in items] == [6, 0] and [it.tiled for it in items] == [True, False]
    assert isinstance(items[0], Item) and math.prod(items[0].grid) == 6


def test_only_gundam_sized_steps_go_to_vllms_encoder_graphs():
    """ENCODER_CUDAGRAPH: graphs are captured for 1024-px views and 640-px tiles; any other step runs eagerly."""

    def step(*asked: tuple[str, int, int]) -> dict:
        pages = [page(m, w, h, i) for i, (m, w, h) in enumerate(asked)]
        return {"pixel_values": vllm_batched([p[0] for p in pages]), "images_crop": vllm_flat([p[1] for p in pages])}

    assert vllm_encoder.sized(step(("gundam", 1240, 1754), ("gundam", 600, 500)), 1024, 640)
    assert vllm_encoder.sized(step(("base", 1240, 1754), ("base", 900, 900)), 1024, 640)  # untiled 1024 views
    assert not vllm_encoder.sized(step(("gundam", 1240, 1754), ("base", 1240, 1754)), 1024, 640)  # padded tiles
    assert not vllm_encoder.sized(step(("gundam", 1240, 1754), ("tiny", 1240, 1754)), 1024, 640)  # a list
    assert not vllm_encoder.sized(
        step(
            ("large", 1240, 1754),
        ),
        1024,
        640,
    )
    assert not vllm_encoder.sized(
        step(
            ("gundam_m", 1240, 1754),
        ),
        1024,
        640,
    )
