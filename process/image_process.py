"""Image decoding with limits, and DeepSeek-OCR's resolution modes and tile arithmetic.

`load_image` turns uploaded bytes into an upright RGB PIL image or raises `InputError` (a clear 4xx);
`load_page` also gives the uploaded file itself when it can stand for that image (no re-encode needed), and for
an engine that sends that file on (`lazy`) may leave the pixels undecoded until something needs them.
`plan_tiles` reproduces the tiling and image-token count of vLLM's DeepSeek-OCR processor
(vllm/transformers_utils/processors/deepseek_ocr.py), so the service can say what a page costs.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from errors import InputError

IMAGE_FORMATS = ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"]
# Formats whose file can be sent on as the page itself (load_page), with their MIME types.
SOURCE_MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}
PATCH_SIZE = 16
DOWNSAMPLE_RATIO = 4


@dataclass(frozen=True)
class ResolutionMode:
    name: str
    base_size: int
    image_size: int
    crop_mode: bool


# The official modes of DeepSeek-OCR (DeepSeek-OCR-vllm/config.py); Gundam-M = 1024-px tiles + 1280 global view.
MODES: dict[str, ResolutionMode] = {
    "tiny": ResolutionMode("tiny", 512, 512, False),
    "small": ResolutionMode("small", 640, 640, False),
    "base": ResolutionMode("base", 1024, 1024, False),
    "large": ResolutionMode("large", 1280, 1280, False),
    "gundam": ResolutionMode("gundam", 1024, 640, True),
    "gundam_m": ResolutionMode("gundam_m", 1280, 1024, True),
}
# DeepSeek-OCR-2: a 1024 global view plus 0-6 tiles of 768 px (crop mode on or off).
OCR2_MODES: dict[str, ResolutionMode] = {
    "gundam": ResolutionMode("gundam", 1024, 768, True),
    "base": ResolutionMode("base", 1024, 768, False),
}


def get_mode(name: str | None, default: str = "gundam", modes: dict[str, ResolutionMode] = MODES) -> ResolutionMode:
    key = (name or default).strip().lower().replace("-", "_")
    if key in modes:
        return modes[key]
    if key in MODES:
        raise InputError(
            422, "mode_not_supported", f"this model does not run the {key} mode", accepted=list(modes)
        )  # fmt: skip
    raise InputError(422, "bad_mode", f"unknown resolution mode {name!r}", accepted=list(modes))


def default_mode(base_size: int, image_size: int, crop_mode: bool, modes: dict[str, ResolutionMode] = MODES) -> str:
    """The mode that BASE_SIZE / IMAGE_SIZE / CROP_MODE describe, as the official scripts set them (else gundam)."""
    for name, m in modes.items():
        if (m.base_size, m.image_size, m.crop_mode) == (base_size, image_size, crop_mode):
            return name
    for name, m in modes.items():  # CROP_MODE=false with a base size: the fixed-size mode of that size
        if not crop_mode and not m.crop_mode and m.base_size == base_size:
            return name
    return "gundam"


@dataclass(frozen=True)
class TilePlan:
    mode: str
    tiles_w: int  # local tiles across (1x1 means no local tiles)
    tiles_h: int
    image_tokens: int  # length of the image token sequence the model sees (newlines, separator included)
    vision_tokens: int  # the paper's count: global + local patches, no separators

    def as_dict(self) -> dict:
        return asdict(self)


def _target_ratios(min_num: int, max_num: int) -> list[tuple[int, int]]:
    ratios = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return sorted(ratios, key=lambda r: r[0] * r[1])


def closest_ratio(width: int, height: int, image_size: int, min_num: int = 2, max_num: int = 6) -> tuple[int, int]:
    """The (tiles_w, tiles_h) grid the official dynamic_preprocess picks."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for ratio in _target_ratios(min_num, max_num):
        diff = abs(aspect - ratio[0] / ratio[1])
        if diff < best_diff:
            best, best_diff = ratio, diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def plan_tiles(
    width: int, height: int, mode: ResolutionMode, min_crops: int = 2, max_crops: int = 6, strategy: str = "v1"
) -> TilePlan:
    """Tiles and image tokens of one image. strategy v1 = DeepSeek-OCR (a newline token per row of the
    global view and of the tile grid), v2 = DeepSeek-OCR-2 (no newline tokens)."""
    if mode.crop_mode and (width > mode.image_size or height > mode.image_size):
        tw, th = closest_ratio(width, height, mode.image_size, min_crops, max_crops)
    else:
        tw, th = 1, 1
    q_base = math.ceil(mode.base_size // PATCH_SIZE / DOWNSAMPLE_RATIO)
    q_tile = math.ceil(mode.image_size // PATCH_SIZE / DOWNSAMPLE_RATIO)
    newline = 1 if strategy == "v1" else 0
    image_tokens = (q_base + newline) * q_base + 1
    vision_tokens = q_base * q_base
    if tw > 1 or th > 1:
        image_tokens += (q_tile * tw + newline) * (q_tile * th)
        vision_tokens += tw * th * q_tile * q_tile
    return TilePlan(mode.name, tw, th, image_tokens, vision_tokens)


def tile_boxes(width: int, height: int, plan: TilePlan) -> list[tuple[int, int, int, int]]:
    """The regions of the original image that each local tile covers (row-major), in pixels."""
    if plan.tiles_w * plan.tiles_h <= 1:
        return [(0, 0, width, height)]
    boxes = []
    for r in range(plan.tiles_h):
        for c in range(plan.tiles_w):
            boxes.append(
                (
                    round(c * width / plan.tiles_w),
                    round(r * height / plan.tiles_h),
                    round((c + 1) * width / plan.tiles_w),
                    round((r + 1) * height / plan.tiles_h),
                )
            )
    return boxes


def sniff_kind(data: bytes) -> str:
    """'pdf', 'image' or 'unknown' from the leading bytes."""
    head = data[:1024].lstrip()
    if head.startswith(b"%PDF"):
        return "pdf"
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff" or data[:6] in (b"GIF87a", b"GIF89a"):
        return "image"
    if data[:4] in (b"II*\x00", b"MM\x00*") or data[:2] == b"BM" or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return "image"
    return "unknown"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        hi = img.getextrema()[1] or 1
        scale = 255.0 / hi if hi > 255 else 1.0
        img = img.point(lambda v: v * scale).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, "white")  # transparent areas become paper, not black
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img if img.mode == "RGB" else img.convert("RGB")  # an RGB page is not copied


def load_image(data: bytes, max_pixels: int, *, frame: int = 0) -> tuple[Image.Image, dict]:
    """Decode bytes into an upright RGB image. Returns (image, info) or raises InputError."""
    rgb, info, _ = _decode(data, max_pixels, frame)
    return rgb, info


def load_page(
    data: bytes, max_pixels: int, *, lazy: bool = False
) -> tuple[Image.Image, dict, tuple[str, bytes] | None]:
    """load_image, and (MIME type, data) when the file decodes to exactly that image (an upright RGB PNG or
    JPEG: remote engines send it on as is), else None. `lazy`: such a file whose header and framing say so
    (complete, no EXIF turn to read first) is not decoded here; its image decodes when its pixels are first
    used (Pillow's lazy load), and `decoded` tells a corrupt one apart from a backend's failure."""
    rgb, info, faithful = _decode(data, max_pixels, 0, lazy=lazy)
    return rgb, info, ((SOURCE_MIME[info["format"]], data) if faithful else None)


def decoded(image: Image.Image) -> None:
    """Decode a page `load_page(lazy=True)` left undecoded (a no-op for any other): InputError if it is corrupt."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(422, "corrupt_image", f"the image could not be decoded: {e}", accepted=IMAGE_FORMATS) from e


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: nothing was cut off
PNG_EXIF = (b"eXIf", b"Raw profile type exif")  # where Pillow finds a PNG's EXIF, maybe only after the pixels


def _sent_as_is(img: Image.Image, fmt: str, frames: int, data: bytes) -> bool:
    """Whether this opened, undecoded file can go to the engine as it is, without decoding it here first: one
    complete RGB frame of a source format, no transparency key, and no EXIF turn (read without the pixels)."""
    if fmt not in SOURCE_MIME or frames != 1 or img.mode != "RGB" or "transparency" in img.info:
        return False
    if fmt == "PNG":
        return data.endswith(PNG_END) and not any(tag in data for tag in PNG_EXIF)
    return data.endswith(b"\xff\xd9") and img.getexif().get(ExifTags.Base.Orientation, 1) == 1  # JPEG: EOI


def _decode(data: bytes, max_pixels: int, frame: int, *, lazy: bool = False) -> tuple[Image.Image, dict, bool]:
    """(image, info, whether the file decodes to exactly the image) or InputError."""
    if not data:
        raise InputError(400, "empty_file", "the image is empty (0 bytes)", accepted=IMAGE_FORMATS)
    if sniff_kind(data) == "pdf":
        raise InputError(
            415, "pdf_sent_as_image", "this file is a PDF, not an image: send it to /pdf/ocr", accepted=IMAGE_FORMATS
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in IMAGE_FORMATS:
                raise InputError(
                    415, "unsupported_format", f"image format {fmt} is not accepted", accepted=IMAGE_FORMATS
                )
            w, h = img.size
            if w <= 0 or h <= 0:
                raise InputError(422, "bad_image", "the image has no pixels", accepted=IMAGE_FORMATS)
            if w * h > max_pixels:
                raise InputError(
                    413,
                    "image_too_large",
                    f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} (MAX_IMAGE_PIXELS)",
                )
            frames = getattr(img, "n_frames", 1)
            if frame:
                img.seek(min(frame, frames - 1))
            elif lazy and _sent_as_is(img, fmt, frames, data):
                return img, {"format": fmt, "frames": frames, "width": w, "height": h}, True
            img.load()
            upright = img.getexif().get(ExifTags.Base.Orientation, 1) == 1
            # Nothing below changes it: one RGB frame (no transparency key), no EXIF turn.
            faithful = (
                upright and fmt in SOURCE_MIME and frames == 1 and img.mode == "RGB" and "transparency" not in img.info
            )
            if not upright:
                img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(413, "image_too_large", f"image refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        raise InputError(415, "not_an_image", "the file is not a readable image", accepted=IMAGE_FORMATS) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(422, "corrupt_image", f"the image could not be decoded: {e}", accepted=IMAGE_FORMATS) from e
    return rgb, {"format": fmt, "frames": frames, "width": rgb.width, "height": rgb.height}, faithful
