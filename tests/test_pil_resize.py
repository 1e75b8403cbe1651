"""process.pil_resize against Pillow itself: every output must be torch.equal to Pillow's, on CPU and on CUDA."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from process.pil_resize import _coeffs, _resample, _vertical_first_rule, contain_size, pad, pad_offset, resize

GRAY = (127, 127, 127)


@pytest.fixture(
    params=[
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    ]
)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@functools.cache
def page(width: int, height: int) -> Image.Image:
    """A white page with lines of black and colored text, rules and a filled box: sharp edges, like a scan."""
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(10, width // 45))
    step = max(12, width // 30)
    colors = ["black", (200, 30, 30), (20, 60, 170), (90, 90, 90)]
    for i, y in enumerate(range(step, height - step, step)):
        text = f"{i:03d} The quick brown fox jumps over the lazy dog; 0123456789 ,.;:!? ({width}x{height})"
        draw.text((width // 20 + (i % 7) * 3, y), text, fill=colors[i % 4], font=font)
        if i % 9 == 0:
            draw.line([(width // 20, y - 3), (width - width // 20, y - 3)], fill="black", width=1 + i % 3)
    draw.rectangle([width // 2, height // 3, width // 2 + width // 5, height // 3 + height // 12], fill=(30, 140, 60))
    return im


@functools.cache
def noise(width: int, height: int) -> Image.Image:
    """Uniform random pixels (seeded): every rounding step matters, so off-by-one errors show."""
    rng = np.random.default_rng(width * 100_003 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@functools.cache
def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    return Image.fromarray(np.round(rgb).astype(np.uint8))


IMAGES = {"page": page, "noise": noise, "gradient": gradient}


def tensor(im: Image.Image, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).to(device)


def assert_same(ours: torch.Tensor, im: Image.Image) -> None:
    ref = tensor(im)
    assert ours.dtype == torch.uint8
    assert ours.shape == ref.shape
    ours = ours.cpu()
    if not torch.equal(ours, ref):
        diff = (ours.int() - ref.int()).abs()
        pytest.fail(f"{int((diff > 0).sum())} samples differ from Pillow, max by {int(diff.max())}")


@pytest.mark.parametrize(
    ("kind", "src", "dst"),
    [
        ("page", (1240, 1754), (1280, 1920)),  # A4 at 150 dpi, upscaled on both axes
        ("page", (1240, 1754), (724, 1024)),  # downscaled on both axes
        ("page", (1654, 2339), (1280, 1920)),  # A4 at 200 dpi, downscaled
        ("noise", (333, 517), (640, 640)),  # odd sizes: up on both axes by different ratios
        ("gradient", (517, 333), (1024, 683)),
        ("noise", (517, 333), (1024, 683)),
        ("noise", (333, 517), (333, 800)),  # width unchanged: vertical pass only
        ("noise", (333, 517), (500, 517)),  # height unchanged: horizontal pass only
        ("noise", (333, 517), (251, 517)),
        ("noise", (7, 5), (640, 640)),  # tiny: kernels clipped at both edges
        ("noise", (1, 1), (3, 2)),
        ("page", (2000, 150), (1024, 77)),  # extreme aspect
        ("noise", (1000, 900), (97, 131)),  # big non-integer reduction: wide kernels
        ("noise", (640, 480), (320, 240)),  # exact halving
        ("page", (1240, 1754), (1180, 1200)),  # height shrinks much more than width: Pillow 13 goes vertical first
        ("noise", (96, 64), (150, 41)),  # width up, height down: vertical first
    ],
)
def test_resize_matches_pillow(kind: str, src: tuple[int, int], dst: tuple[int, int], device: str) -> None:
    im = IMAGES[kind](*src)
    assert_same(resize(tensor(im, device), dst), im.resize(dst))


def test_same_size_is_a_copy(device: str) -> None:
    im = noise(333, 517)
    src = tensor(im, device)
    out = resize(src, im.size)
    assert_same(out, im.resize(im.size))
    out[:, 0, 0] ^= 1
    assert not torch.equal(out, src)


def test_batched_input(device: str) -> None:
    ims = [noise(96, 64), gradient(96, 64)]
    out = resize(torch.stack([tensor(im, device) for im in ims]), (150, 41))
    for got, im in zip(out, ims, strict=True):
        assert_same(got, im.resize((150, 41)))


@pytest.mark.parametrize(
    ("src", "dst", "vertical_first"),
    [
        ((200, 200), (150, 99), True),  # 2 * 50 < 101
        ((200, 200), (150, 100), False),  # 2 * 50 == 100: tie goes horizontal first
        ((200, 200), (149, 99), False),  # 2 * 51 > 101
        ((27, 159), (8, 45), True),
        ((96, 64), (150, 41), True),  # width grows, height shrinks
        ((64, 96), (41, 150), False),  # height grows: always horizontal first
        ((100, 100), (70, 60), False),
    ],
)
def test_pass_order(src: tuple[int, int], dst: tuple[int, int], vertical_first: bool) -> None:
    """Pillow 13.0.0 picks the pass order from the sizes, and the order shows in the result: pin the rule."""
    im = noise(*src)
    src_t, ref = tensor(im), tensor(im.resize(dst))
    h_first = _resample(_resample(src_t, -1, dst[0]), -2, dst[1])
    v_first = _resample(_resample(src_t, -2, dst[1]), -1, dst[0])
    vertical_first = vertical_first and _vertical_first_rule()  # Pillow 12 (vLLM's GPU image) always goes h first
    assert torch.equal(v_first if vertical_first else h_first, ref)
    assert not torch.equal(h_first if vertical_first else v_first, ref)
    assert torch.equal(resize(src_t, dst), ref)


def test_noise_has_teeth() -> None:
    """A plausible but inexact implementation (one float64 pass with the same weights, rounding only at the end,
    no uint8 between the passes) is off by one in many samples of the noise image: the exact tests can tell."""
    im = noise(333, 517)
    idx_h, w_h = _coeffs(333, 640)
    idx_v, w_v = _coeffs(517, 640)
    dense_h = torch.zeros(333, 640, dtype=torch.float64)
    dense_h.index_put_((idx_h, torch.arange(640).expand_as(idx_h)), w_h.double() / 2**22, accumulate=True)
    dense_v = torch.zeros(517, 640, dtype=torch.float64)
    dense_v.index_put_((idx_v, torch.arange(640).expand_as(idx_v)), w_v.double() / 2**22, accumulate=True)
    naive = (dense_v.T @ tensor(im).double() @ dense_h).round().clamp(0, 255).to(torch.uint8)
    ref = tensor(im.resize((640, 640)))
    diff = (naive.int() - ref.int()).abs()
    assert int((diff > 0).sum()) > 1000
    assert torch.equal(resize(tensor(im), (640, 640)), ref)


@pytest.mark.parametrize(
    ("kind", "src", "size"),
    [
        ("page", (1240, 1754), (1024, 1024)),  # tall: 724x1024, pasted at x=150
        ("page", (1654, 2339), (1024, 1024)),
        ("gradient", (517, 333), (1024, 1024)),  # wide: 1024x660
        ("noise", (600, 600), (1024, 1024)),  # square: no padding
        ("noise", (7, 5), (1024, 1024)),  # small: 1024x731, y = round(146.5) = 146
        ("page", (2000, 150), (1024, 1024)),
        ("noise", (641, 481), (640, 480)),  # ratios differ but contain rounds to exactly the target
    ],
)
def test_pad_matches_pillow(kind: str, src: tuple[int, int], size: tuple[int, int], device: str) -> None:
    im = IMAGES[kind](*src)
    assert_same(pad(tensor(im, device), size, GRAY), ImageOps.pad(im, size, color=GRAY))


def test_pad_geometry_matches_pillow(device: str) -> None:
    """Many small random shapes and targets, ties in round() and sides that round to 0 included."""
    rng = np.random.default_rng(7)
    cases = [((7, 5), (64, 64)), ((300, 1), (64, 64)), ((1, 300), (64, 64)), ((5, 7), (48, 32)), ((33, 10), (20, 6))]
    cases += [(tuple(rng.integers(1, 200, 2).tolist()), tuple(rng.integers(1, 96, 2).tolist())) for _ in range(60)]
    for src, size in cases:
        im = noise(*src)
        ref = ImageOps.pad(im, size, color=(10, 200, 30))
        assert_same(pad(tensor(im, device), size, (10, 200, 30)), ref)
        resized = ImageOps.contain(im, size)
        assert contain_size(*src, size) == resized.size
        if resized.size != size and min(resized.size) > 0:
            x, y = pad_offset(resized.size, size)
            assert torch.equal(tensor(ref)[:, y : y + resized.height, x : x + resized.width], tensor(resized))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        resize(torch.zeros(3, 4, 4, dtype=torch.float32), (2, 2))
    with pytest.raises(ValueError):
        resize(torch.zeros(3, 4, 4, dtype=torch.uint8), (0, 2))
