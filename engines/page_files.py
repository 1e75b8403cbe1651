"""VLLM_PAGE_FILES: pages reach the managed `vllm serve` as raw pixel files instead of PNG data URLs.

This service has already decoded every page; sending the original PNG makes each of vLLM's API processes
decode it again (the largest share of their CPU per page once DEVICE_VIEWS cut the views on the GPU). A
binary PPM/PGM is the page's pixels behind a one-line header: vLLM reads it as a `file://` URL from the one
folder it is allowed (`--allowed-local-media-path`) and Pillow "decodes" it with a copy. The folder is in
/dev/shm (memory) when that has room, else under DATA_DIR; a file lives while its page is in flight. A page
that cannot be written (a mode PPM does not hold, a full folder) travels as a data URL, as before.
With VLLM_PAGE_SOURCES a page that this service left undecoded (an upright RGB PNG or JPEG upload,
image_process.load_page) is written as the uploaded file itself, and vLLM's API processes decode it: a burst's
decoding is then spread over them instead of waiting on this one process, and ~150 KB is written, not ~6.5 MB.
Files are written by a few threads of their own: under a burst the shared thread pool holds every page's decode,
and a write queued behind them would keep the first pages from vLLM until the last page is decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

log = logging.getLogger("ocr.page_files")
SHM = Path("/dev/shm")
SHM_MIN_FREE = 2 << 30  # a 256-page burst of A4 pages at 150 dpi holds ~1.7 GB of files
SUFFIXES = {"RGB": "ppm", "L": "pgm"}  # the modes Pillow writes under "PPM": P6 (RGB) and P5 (L)
SOURCE_SUFFIXES = {"image/png": "png", "image/jpeg": "jpg"}  # an uploaded file written as it is (load_page)
WRITERS = 4  # threads writing files: a page takes ~3 ms, vLLM takes ~30 pages/s at most under a burst


def choose_folder(data_dir: Path, shm: Path = SHM) -> Path:
    """A fresh folder for this process's page files: in /dev/shm when it has room, else under data_dir."""
    name = f"ocr-pages-{os.getpid()}"
    with contextlib.suppress(OSError):
        if shm.is_dir() and shutil.disk_usage(shm).free >= SHM_MIN_FREE:
            return shm / name
    return data_dir / "vllm_serve" / name


class PageFiles:
    """A folder of in-flight page files: `write` gives a page's file (None: send it another way)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written = self.fallbacks = 0
        self.uploads = 0  # of the written: the upload itself (VLLM_PAGE_SOURCES)
        self._count = threading.Lock()  # writes run in several threads
        self._writers: ThreadPoolExecutor | None = None

    def open(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # a previous run's leftovers under our pid
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="page-files")

    def close(self) -> None:
        if self._writers is not None:
            self._writers.shutdown(wait=True, cancel_futures=True)
            self._writers = None
        shutil.rmtree(self.folder, ignore_errors=True)

    async def write_soon(self, image: Image.Image, source: tuple[str, bytes] | None = None) -> Path | None:
        """`write` in this folder's own threads (in the caller's thread before `open`)."""
        if self._writers is None:
            return self.write(image, source)
        return await asyncio.get_running_loop().run_in_executor(self._writers, self.write, image, source)

    def write(self, image: Image.Image, source: tuple[str, bytes] | None = None) -> Path | None:
        """The page's file: `source` (MIME type, bytes) as it is when given, else the image's pixels as PPM/PGM."""
        suffix = SOURCE_SUFFIXES.get(source[0]) if source else SUFFIXES.get(image.mode)
        if suffix is None:
            self._tally(written=False)
            return None
        path = self.folder / f"{uuid.uuid4().hex}.{suffix}"
        try:
            if source:
                path.write_bytes(source[1])
            else:
                image.save(path, "PPM")
        except OSError as e:  # full, removed, read-only: this page goes as a data URL
            path.unlink(missing_ok=True)
            self._tally(written=False)
            log.warning("page file not written (%s): the page goes as a data URL", e)
            return None
        self._tally(written=True, upload=source is not None)
        return path

    def _tally(self, *, written: bool, upload: bool = False) -> None:
        with self._count:
            if written:
                self.written += 1
                self.uploads += upload
            else:
                self.fallbacks += 1

    def info(self) -> dict:
        counts = {"written": self.written, "uploads": self.uploads, "fallbacks": self.fallbacks}
        return {"folder": str(self.folder), **counts}
