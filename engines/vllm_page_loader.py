"""vLLM media connector `deepseek_ocr_pages` (VLLM_MEDIA_CONNECTOR, registered by engines/vllm_register.py): a
page file (engines/page_files.py) is read straight into the uint8 [H, W, 3] tensor that the DEVICE_VIEWS processor
sends to the engine (engines/vllm_views.py).

vLLM's own image loader opens the file with Pillow, unpacks it into Pillow's 4-byte pixels, copies it again in
`exif_transpose`, and the processor copies it a third time into a tensor: a third of an API process's time per
page once the views were cut on the GPU (bench/RESULTS.md). Here one read fills the tensor. Only the DEVICE_VIEWS
processor takes a tensor, so the managed engine names this connector only with DEVICE_VIEWS on DeepSeek-OCR; any
other URL, and a file this does not parse, goes through vLLM's loader unchanged. A page file that is the upload
itself (VLLM_PAGE_SOURCES: an upright RGB PNG or JPEG) is decoded here into that tensor: an 8-bit RGB PNG by
OpenCV (a vLLM dependency; the same pixels, 1.3-1.6x faster than Pillow's decode and copy on the dev
machine), anything else by Pillow.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import torch
from PIL import ExifTags, Image

from engines.page_files import SOURCE_SUFFIXES, SUFFIXES
from engines.vllm_front_stats import FETCHED
from process.image_process import PNG_EXIF

try:
    from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
except ImportError:  # no vLLM here (CI, the CPU engine): the reading stays testable
    MEDIA_CONNECTOR_REGISTRY = None
    MediaConnector = object  # type: ignore[assignment,misc]
try:
    import cv2  # vLLM requires opencv-python-headless, so it is there wherever vLLM calls this
except ImportError:
    cv2 = None

NAME = "deepseek_ocr_pages"
log = logging.getLogger(f"vllm.{NAME}")  # under vLLM's logger: its handler prints this in vLLM's processes
# What Pillow writes for a PPM (RGB, "P6") or PGM (L, "P5") page: magic, width, height, 255, one whitespace.
HEADER = re.compile(rb"P([56])\s+(\d+)\s+(\d+)\s+255\s")
HEADER_MAX = 64
RAW = tuple(f".{s}" for s in SUFFIXES.values())  # pixels behind a header (PageFiles.write from an image)
ENCODED = tuple(f".{s}" for s in SOURCE_SUFFIXES.values())  # the upload itself (PageFiles.write from a source)


def page_file(url: str, allowed: Path | None) -> Path | None:
    """The page file a `file://` URL names, if it is one of PageFiles' inside the folder vLLM may read (else None)."""
    parts = urlsplit(url)
    if parts.scheme != "file" or allowed is None:
        return None
    path = Path(unquote(parts.netloc + parts.path))
    if path.suffix not in RAW + ENCODED or allowed not in path.resolve().parents:
        return None
    return path


def read_page(path: Path) -> torch.Tensor | None:
    """A page file as uint8 [H, W, 3], or None to leave it to vLLM's loader."""
    return read_encoded(path) if path.suffix in ENCODED else read_raw(path)


PNG_PLAIN = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"  # signature, then the IHDR chunk: its width, height...
PNG_RGB8 = b"\x08\x02"  # ...then bit depth 8, colour type 2 (RGB, no alpha, no palette)


def plain_png(data: bytes) -> bool:
    """An 8-bit RGB PNG with no EXIF: OpenCV and Pillow decode it to the same pixels."""
    return data.startswith(PNG_PLAIN) and data[24:26] == PNG_RGB8 and not any(tag in data for tag in PNG_EXIF)


def read_encoded(path: Path) -> torch.Tensor | None:
    """An upright RGB PNG/JPEG decoded as vLLM's loader would (a plain PNG by OpenCV, else Pillow); None if it is
    anything else (vLLM's loader converts and turns it). A corrupt file raises Pillow's error, as vLLM's would."""
    data = path.read_bytes()
    if cv2 is not None and plain_png(data):
        page = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
        if page is not None:
            return torch.from_numpy(page)
    with Image.open(io.BytesIO(data)) as image:  # corrupt PNGs come here too, for Pillow's error
        image.load()
        if image.mode != "RGB" or image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            return None
        return torch.from_numpy(np.array(image))  # Pillow's packed RGB bytes, copied once into writable memory


def read_raw(path: Path) -> torch.Tensor | None:
    """A PPM/PGM page (a grey page's channel repeated, as convert("RGB") does), filled by one read; None if the
    header is not the plain one Pillow writes."""
    with path.open("rb", buffering=0) as f:
        head = f.read(HEADER_MAX)
        m = HEADER.match(head)
        if m is None:
            return None
        channels = 3 if m[1] == b"6" else 1
        width, height = int(m[2]), int(m[3])
        size = width * height * channels
        if size == 0:
            return None
        buf = bytearray(size)
        f.seek(m.end())
        view, got = memoryview(buf), 0
        while got < size and (n := f.readinto(view[got:])):
            got += n
    if got != size:
        raise ValueError(f"page file {path.name} is truncated: {got} of {size} pixel bytes")
    page = torch.frombuffer(buf, dtype=torch.uint8).view(height, width, channels)
    return page if channels == 3 else page.expand(height, width, 3).contiguous()


class PageFileConnector(MediaConnector):
    """vLLM's MediaConnector, but a page file becomes the processor's tensor without Pillow's copies."""

    pages_read = 0  # in this process (the first is logged: the connector is in use)

    def fetch_image(self, image_url: str, *, image_mode: str = "RGB"):
        path, t0 = self._page_path(image_url, image_mode), time.time()
        if path is not None and (page := read_page(path)) is not None:
            return self._counted(page, t0)
        return super().fetch_image(image_url, image_mode=image_mode)  # type: ignore[misc]

    async def fetch_image_async(self, image_url: str, *, image_mode: str = "RGB"):
        path, t0 = self._page_path(image_url, image_mode), time.time()
        if (
            path is not None
            and (page := await asyncio.get_running_loop().run_in_executor(None, read_page, path)) is not None
        ):
            return self._counted(page, t0)
        return await super().fetch_image_async(image_url, image_mode=image_mode)  # type: ignore[misc]

    @classmethod
    def _counted(cls, page: torch.Tensor, t0: float) -> torch.Tensor:
        setattr(page, FETCHED, t0)  # ocr_vllm_prep_seconds is timed from here (engines/vllm_front_stats.py)
        cls.pages_read += 1
        if cls.pages_read == 1:
            log.info("%s: page files are read straight into the processor's tensors", NAME)
        return page

    def _page_path(self, image_url: str, image_mode: str) -> Path | None:
        return page_file(image_url, self.allowed_local_media_path) if image_mode == "RGB" else None


def register() -> None:
    """Make the connector loadable by name in this vLLM process."""
    if MEDIA_CONNECTOR_REGISTRY is not None:
        MEDIA_CONNECTOR_REGISTRY.register(NAME)(PageFileConnector)
