"""Resolution modes, the tile arithmetic of vLLM's DeepSeek-OCR processor, and decoding with limits."""

from __future__ import annotations

import io

import pytest
from conftest import BROKEN, BROKEN_CASES, DOCLING, cut_inside
from PIL import Image

from errors import InputError
from process.image_process import (
    MODES,
    OCR2_MODES,
    decoded,
    default_mode,
    get_mode,
    load_image,
    load_page,
    plan_tiles,
    tile_boxes,
)


@pytest.mark.parametrize(
    ("mode", "size", "grid", "image_tokens", "vision_tokens"),
    [
        # 1240x1754 A4 page in Gundam: 2x3 tiles; 16*17+1 global + (10*2+1)*(10*3) local = 903
        ("gundam", (1240, 1754), (2, 3), 903, 256 + 6 * 100),
        # Small images get no local tiles even in Gundam.
        ("gundam", (600, 400), (1, 1), 273, 256),
        # Wide page: 3x2
        ("gundam", (1754, 1240), (3, 2), 273 + 31 * 20, 256 + 600),
        # The fixed modes: the paper's vision-token counts (64/100/256/400).
        ("tiny", (1240, 1754), (1, 1), 8 * 9 + 1, 64),
        ("small", (1240, 1754), (1, 1), 10 * 11 + 1, 100),
        ("base", (1240, 1754), (1, 1), 16 * 17 + 1, 256),
        ("large", (1240, 1754), (1, 1), 20 * 21 + 1, 400),
        # Gundam-M: 1024-px tiles + a 1280 global view: 20 x 21 + 1 global, (16 x 2 + 1) x 48 tiles.
        ("gundam_m", (1240, 1754), (2, 3), 20 * 21 + 1 + 33 * 48, 400 + 6 * 256),
        ("gundam_m", (900, 700), (1, 1), 20 * 21 + 1, 400),  # fits in one 1024 tile: global view only
    ],
)
def test_tile_plan_matches_vllm_processor(mode, size, grid, image_tokens, vision_tokens):
    plan = plan_tiles(*size, MODES[mode])
    assert (plan.tiles_w, plan.tiles_h) == grid
    assert plan.image_tokens == image_tokens
    assert plan.vision_tokens == vision_tokens


def test_ocr2_plan_has_no_newline_tokens():
    # DeepSeek-OCR-2 (strategy v2): 16 x 16 global + 1 separator, 768-px tiles of 12 x 12 queries each.
    plan = plan_tiles(1240, 1754, OCR2_MODES["gundam"], strategy="v2")
    assert (plan.tiles_w, plan.tiles_h) == (2, 3)
    assert plan.image_tokens == 256 + 1 + (12 * 2) * (12 * 3)
    assert plan_tiles(1240, 1754, OCR2_MODES["base"], strategy="v2").image_tokens == 257


@pytest.mark.parametrize(
    ("base", "image", "crop", "mode"),
    [
        (1024, 640, True, "gundam"),
        (512, 512, False, "tiny"),
        (1280, 1280, False, "large"),
        (1280, 1024, True, "gundam_m"),
        (1024, 640, False, "base"),
        (640, 640, False, "small"),
    ],
)
def test_default_mode_follows_the_official_settings(base, image, crop, mode):
    assert default_mode(base, image, crop) == mode


def test_a_mode_the_model_lacks_is_a_422_naming_what_it_runs():
    with pytest.raises(InputError) as e:
        get_mode("tiny", modes=OCR2_MODES)
    assert e.value.status == 422 and e.value.code == "mode_not_supported"
    assert e.value.accepted == ["gundam", "base"]
    assert get_mode("Gundam-M") is MODES["gundam_m"]


def test_tile_boxes_cover_the_image_exactly():
    plan = plan_tiles(1240, 1754, MODES["gundam"])
    boxes = tile_boxes(1240, 1754, plan)
    assert len(boxes) == 6
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) == 1240 * 1754
    assert boxes[0][:2] == (0, 0) and boxes[-1][2:] == (1240, 1754)


def test_unknown_mode_is_a_422_listing_modes():
    with pytest.raises(InputError) as e:
        get_mode("huge")
    assert e.value.status == 422 and "gundam" in e.value.accepted


@pytest.mark.parametrize(("name", "status", "code"), BROKEN_CASES)
def test_broken_files_raise_clear_errors(name, status, code):
    with pytest.raises(InputError) as e:
        load_image((BROKEN / name).read_bytes(), 60_000_000)
    assert (e.value.status, e.value.code) == (status, code)


def test_pixel_limit_applies_before_decoding():
    data = (DOCLING / "qr_bill_example.jpg").read_bytes()
    with pytest.raises(InputError) as e:
        load_image(data, 10_000)
    assert e.value.status == 413 and "10000" in e.value.message


def test_odd_but_valid_images_decode_to_upright_rgb():
    img, info = load_image((BROKEN / "cmyk.jpg").read_bytes(), 60_000_000)
    assert img.mode == "RGB" and info["format"] == "JPEG"
    g16, _ = load_image((BROKEN / "gray16.png").read_bytes(), 60_000_000)
    assert g16.mode == "RGB" and g16.getextrema()[0][1] > 0  # not flattened to black
    assert len(g16.getcolors(1 << 16) or []) > 2  # and not to white
    gif, info = load_image((BROKEN / "animated.gif").read_bytes(), 60_000_000)
    assert gif.mode == "RGB" and info["frames"] == 2
    _tif, info = load_image((BROKEN / "multipage.tif").read_bytes(), 60_000_000)
    assert info["frames"] == 2
    _webp, info = load_image((DOCLING / "webp-test.webp").read_bytes(), 60_000_000)
    assert info["format"] == "WEBP"


def test_exif_orientation_is_applied():
    import io

    from PIL import Image

    raw = Image.open(io.BytesIO((BROKEN / "exif_rotated.jpg").read_bytes()))
    img, _ = load_image((BROKEN / "exif_rotated.jpg").read_bytes(), 60_000_000)
    assert raw.getexif().get(0x0112) == 6
    assert img.size == (raw.height, raw.width)  # orientation 6 = rotate 90: sides swap


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_load_page_gives_the_file_only_when_it_decodes_to_exactly_the_image():
    page = Image.new("RGB", (120, 80), "white")
    page.paste((0, 0, 200), (0, 0, 30, 20))
    turned = Image.Exif()
    turned[0x0112] = 6
    upright = Image.Exif()
    upright[0x0112] = 1
    faithful = {
        "rgb.png": (_encode(page, "PNG"), "image/png"),
        "rgb.jpg": (_encode(page, "JPEG"), "image/jpeg"),
        "upright.jpg": (_encode(page, "JPEG", exif=upright), "image/jpeg"),  # orientation 1 changes nothing
        "qr_bill_example.jpg": ((DOCLING / "qr_bill_example.jpg").read_bytes(), "image/jpeg"),
    }
    for name, (data, mime) in faithful.items():
        img, _, source = load_page(data, 60_000_000)
        assert source == (mime, data), name
        assert Image.open(io.BytesIO(data)).convert("RGB").tobytes() == img.tobytes(), name

    apng = _encode(page, "PNG", save_all=True, append_images=[page.rotate(180)])
    rewritten = {
        "rgba.png": _encode(page.convert("RGBA"), "PNG"),
        "gray.png": _encode(page.convert("L"), "PNG"),
        "palette.png": _encode(page.convert("P"), "PNG"),
        "rgb_with_transparent_key.png": _encode(page, "PNG", transparency=(255, 255, 255)),
        "exif6.jpg": _encode(page, "JPEG", exif=turned),
        "two_frames.png": apng,
        "rgb.webp": _encode(page, "WEBP", lossless=True),
        "rgb.tif": _encode(page, "TIFF"),
        "cmyk.jpg": (BROKEN / "cmyk.jpg").read_bytes(),
        "exif_rotated.jpg": (BROKEN / "exif_rotated.jpg").read_bytes(),
        "gray16.png": (BROKEN / "gray16.png").read_bytes(),
        "example_image_01.png": (DOCLING / "example_image_01.png").read_bytes(),  # RGBA
    }
    for name, data in rewritten.items():
        img, _, source = load_page(data, 60_000_000)
        assert img.mode == "RGB" and source is None, name
    assert load_image(rewritten["exif6.jpg"], 60_000_000)[0].size == (80, 120)  # turned upright
    assert load_image(apng, 60_000_000)[1]["frames"] == 2


def test_a_lazy_page_is_decoded_only_when_its_pixels_are_used(scan_png):
    jpeg = (DOCLING / "qr_bill_example.jpg").read_bytes()  # RGB, EXIF orientation 1
    for data, mime in ((scan_png, "image/png"), (jpeg, "image/jpeg")):
        eager, eager_info, _ = load_page(data, 60_000_000)
        img, info, source = load_page(data, 60_000_000, lazy=True)
        assert source == (mime, data) and info == eager_info
        decoded(img)
        assert img.mode == "RGB" and img.tobytes() == eager.tobytes()
    # Corrupt inside its pixels: an eager load refuses it at once; a lazy one when its pixels are decoded.
    bad = cut_inside(scan_png)
    with pytest.raises(InputError) as eager_error:
        load_page(bad, 60_000_000)
    img, _, source = load_page(bad, 60_000_000, lazy=True)
    assert source == ("image/png", bad)
    with pytest.raises(InputError) as lazy_error:
        decoded(img)
    assert lazy_error.value.status == eager_error.value.status == 422
    assert lazy_error.value.code == eager_error.value.code == "corrupt_image"


def test_pages_that_cannot_go_undecoded_are_decoded_at_once(scan_png):
    page = Image.new("RGB", (120, 80), "white")
    page.paste((0, 0, 200), (0, 0, 30, 20))
    turned = Image.Exif()
    turned[0x0112] = 6
    with pytest.raises(InputError) as e:  # cut short: no IEND, so decoded (and refused) here
        load_page(scan_png[: len(scan_png) // 2], 60_000_000, lazy=True)
    assert e.value.status == 422
    with pytest.raises(InputError):  # a JPEG without its end marker
        load_page(_encode(page, "JPEG")[:-200], 60_000_000, lazy=True)
    # A PNG's EXIF may follow its pixels: it is decoded here and turned upright, not sent as uploaded.
    img, _, source = load_page(_encode(page, "PNG", exif=turned), 60_000_000, lazy=True)
    assert img.size == (80, 120) and source is None
    for data in (_encode(page.convert("L"), "PNG"), _encode(page, "JPEG", exif=turned)):
        img, _, source = load_page(data, 60_000_000, lazy=True)
        assert source is None and img.mode == "RGB"
        decoded(img)  # already decoded: nothing to do
