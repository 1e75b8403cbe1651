"""Pillow's 8-bit BICUBIC ``Image.resize`` and ``ImageOps.pad``, bit for bit, as torch ops.

Lets the image preprocessing run on the GPU (or any torch device) instead of in Pillow on a busy CPU while
producing exactly the bytes Pillow would. Images are uint8 tensors shaped [..., C, H, W] (channels first); sizes
are (width, height) like Pillow. The algorithm follows Pillow's src/libImaging/Resample.c (precompute_coeffs,
normalize_coeffs_8bpc, the two 8bpc passes) and PIL/ImageOps.py (contain, pad);
tests/test_pil_resize.py checks the output against Pillow itself with torch.equal.
"""

from __future__ import annotations

import functools

import torch

_PRECISION_BITS = 32 - 8 - 2  # Resample.c: 8 bits of result, 2 for overflow, the sign bit
_SUPPORT = 2.0  # support of Pillow's bicubic filter


def _bicubic(x: float) -> float:
    # Resample.c bicubic_filter with a = -0.5, in C's operation order (Python floats are C doubles).
    a = -0.5
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(maxsize=64)
def _coeffs(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample.c precompute_coeffs + normalize_coeffs_8bpc for box (0, in_size), as taps.

    Returns (index, weight), both [taps, out_size] CPU tensors: output sample o is
    sum_t in[index[t, o]] * weight[t, o] (int64 index, int32 fixed-point weight, 0 past the kernel's end).
    """
    scale = filterscale = in_size / out_size
    filterscale = max(filterscale, 1.0)
    support = _SUPPORT * filterscale
    ss = 1.0 / filterscale
    rows = []
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero like C's (int)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for v in w:  # sequential sum, as in C (math.fsum or pairwise sums could round differently)
            ww += v
        if ww != 0.0:
            w = [v / ww for v in w]
        k = [int(0.5 + v * (1 << _PRECISION_BITS)) if v >= 0 else int(-0.5 + v * (1 << _PRECISION_BITS)) for v in w]
        rows.append((xmin, k))
    taps = max(len(k) for _, k in rows)
    index = torch.tensor([[min(xmin + t, in_size - 1) for xmin, _ in rows] for t in range(taps)], dtype=torch.int64)
    weight = torch.tensor([[k[t] if t < len(k) else 0 for _, k in rows] for t in range(taps)], dtype=torch.int32)
    return index, weight


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`; to a GPU from pinned memory, so the copy does not wait for the GPU's queued work
    (PyTorch synchronises a blocking host-to-GPU copy, and the engine core could not queue a step ahead)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)


@functools.lru_cache(maxsize=64)
def _coeffs_on(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """_coeffs on `device`, copied there once (not on every pass of every page)."""
    index, weight = _coeffs(in_size, out_size)
    return _to(index, device), _to(weight, device)


@functools.lru_cache(maxsize=16)
def _color_on(color: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A fill colour on `device`, copied there once, not for every page."""
    return _to(torch.tensor(color, dtype=torch.uint8), device)


def _resample(img: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    """One 8bpc pass along dim (-1 horizontal, -2 vertical): clip8(2**21 + sum pixel * k) in exact int32 math."""
    index, weight = _coeffs_on(img.shape[dim], out_size, img.device)
    shape = [1] * img.dim()
    shape[dim] = out_size
    # Integer arithmetic, so the result is the same on every device and in any summation order (no TF32 or
    # float rounding involved); the sums stay far inside int32, as they do in Pillow's C.
    acc = torch.full((), 1 << (_PRECISION_BITS - 1), dtype=torch.int32, device=img.device)
    for t in range(index.shape[0]):
        acc = acc + img.index_select(dim, index[t]).to(torch.int32) * weight[t].view(shape)
    # clip8: arithmetic shift (floor division by 2**22), then clamp to 0..255.
    return (acc >> _PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


@functools.cache
def _vertical_first_rule() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the height shrinks by more than twice as many
    pixels as the width does (Pillow 13.0.0 does; Pillow 12 always goes horizontal first). The order shows in the
    result (the intermediate is rounded to uint8), so it is read off Pillow itself: a 96x64 noise image resized to
    150x41, compared with both orders."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    src = torch.from_numpy(noise).permute(2, 0, 1)
    ref = torch.from_numpy(np.array(Image.fromarray(noise).resize((150, 41)))).permute(2, 0, 1)
    return torch.equal(_resample(_resample(src, -2, 41), -1, 150), ref)


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow ``Image.resize(size)`` (BICUBIC, whole image) of a uint8 [..., C, H, W] tensor; size = (width, height)."""
    if img.dtype != torch.uint8 or img.dim() < 3:
        raise ValueError(f"expected a uint8 [..., C, H, W] tensor, got {img.dtype} {tuple(img.shape)}")
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0 or img.shape[-1] == 0 or img.shape[-2] == 0:
        raise ValueError(f"cannot resize {tuple(img.shape)} to {size}")
    in_height, in_width = img.shape[-2], img.shape[-1]
    passes = [(-1, width), (-2, height)]
    if _vertical_first_rule() and height < in_height and 2 * (in_width - width) < in_height - height:
        passes.reverse()
    out = img
    for dim, n in passes:
        if n != out.shape[dim]:
            out = _resample(out, dim, n)
    return out.clone() if out is img else out  # same size: Pillow returns a copy


def contain_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """The size ``ImageOps.contain(image, size)`` resizes a width x height image to (aspect kept, fits in size)."""
    im_ratio = width / height
    dest_ratio = size[0] / size[1]
    if im_ratio != dest_ratio:
        if im_ratio > dest_ratio:
            new_height = round(height / width * size[0])  # Python round: ties to even, as in Pillow
            if new_height != size[1]:
                return (size[0], new_height)
        else:
            new_width = round(width / height * size[1])
            if new_width != size[0]:
                return (new_width, size[1])
    return (size[0], size[1])


def pad_offset(resized: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Top-left (x, y) where ``ImageOps.pad`` (centering 0.5, 0.5) pastes a resized image into a size canvas."""
    if resized[0] != size[0]:
        return (round((size[0] - resized[0]) * 0.5), 0)
    return (0, round((size[1] - resized[1]) * 0.5))


def pad(img: torch.Tensor, size: tuple[int, int], color: tuple[int, ...]) -> torch.Tensor:
    """Pillow ``ImageOps.pad(image, size, color=color)`` (BICUBIC, centered) of a uint8 [..., C, H, W] tensor."""
    rw, rh = contain_size(img.shape[-1], img.shape[-2], size)
    resized = resize(img, (rw, rh)) if rw > 0 and rh > 0 else None  # Pillow: an empty image when a side rounds to 0
    if resized is not None and (rw, rh) == tuple(size):
        return resized
    canvas = img.new_empty((*img.shape[:-2], size[1], size[0]))
    canvas.copy_(_color_on(tuple(color), img.device).view(-1, 1, 1).expand_as(canvas))
    if resized is not None:
        x, y = pad_offset((rw, rh), size)
        canvas[..., y : y + rh, x : x + rw] = resized
    return canvas
