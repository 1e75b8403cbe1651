"""VLLM_PAGE_FILES: pages to the managed `vllm serve` as raw pixel files (engines/page_files.py).

vLLM is not installed here: what is tested is what this service does (the files' pixels, their lifetime, the
flag that lets vLLM read them, the fallbacks); vLLM's reading of file:// URLs is its own (checked on the GPU).
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import cut_inside, scan_page
from PIL import Image

import pipeline
from config import Settings
from engines.page_files import PageFiles, choose_folder
from engines.vllm_serve_engine import ManagedVLLMServeEngine, serve_argv
from errors import InputError


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_a_page_file_holds_exactly_the_pages_pixels(tmp_path):
    files = PageFiles(tmp_path / "pages")
    files.open()
    page = scan_page()
    for image in (page, page.convert("L")):
        path = files.write(image)
        assert path is not None and path.parent == files.folder
        with Image.open(path) as back:
            back.load()
            assert back.format == "PPM" and same_pixels(back, image)
        # vLLM opens it from its bytes as Pillow does, then converts to RGB: the page it would have decoded
        with Image.open(io.BytesIO(path.read_bytes())) as back:
            assert same_pixels(back.convert("RGB"), image.convert("RGB"))
    assert files.info() == {"folder": str(files.folder), "written": 2, "uploads": 0, "fallbacks": 0}


def test_modes_ppm_does_not_hold_and_unwritable_folders_fall_back(tmp_path):
    files = PageFiles(tmp_path / "pages")
    files.open()
    assert files.write(scan_page().convert("RGBA")) is None  # PPM holds RGB and L only: a data URL instead
    files.close()  # the folder is gone: writing fails, the page is not lost
    assert not files.folder.exists()
    assert files.write(scan_page()) is None
    assert files.fallbacks == 2 and files.written == 0


def test_pages_are_written_while_the_shared_thread_pool_is_busy(tmp_path):
    """Under a burst every page's decode waits in asyncio's shared thread pool: a page decoded early must reach
    vLLM without waiting for them, so its file is written by the folder's own threads."""
    files = PageFiles(tmp_path / "pages")
    files.open()
    page = scan_page()

    async def burst() -> list[Path | None]:
        release = threading.Event()
        blockers = [asyncio.create_task(asyncio.to_thread(release.wait, 20)) for _ in range(64)]  # every worker
        try:
            return await asyncio.wait_for(asyncio.gather(*(files.write_soon(page) for _ in range(12))), 10)
        finally:
            release.set()
            await asyncio.gather(*blockers)

    paths = asyncio.run(burst())
    assert all(p is not None and p.exists() for p in paths) and len({p.name for p in paths}) == 12
    assert files.info()["written"] == 12  # counted from several threads
    files.close()
    assert not files.folder.exists()


def test_open_clears_a_previous_runs_leftovers(tmp_path):
    files = PageFiles(tmp_path / "pages")
    files.open()
    stale = files.write(scan_page())
    PageFiles(files.folder).open()
    assert stale is not None and not stale.exists() and files.folder.is_dir()


def test_the_folder_is_in_memory_when_there_is_room(tmp_path):
    roomy = tmp_path / "shm"
    roomy.mkdir()
    chosen = choose_folder(tmp_path / "data", shm=roomy)
    # this machine's tmp may be small; either way the folder is this process's own
    assert chosen.name.startswith("ocr-pages-") and chosen.parent in (roomy, tmp_path / "data" / "vllm_serve")
    assert choose_folder(tmp_path / "data", shm=tmp_path / "missing").parent == tmp_path / "data" / "vllm_serve"


def test_vllm_may_read_the_folder_only_when_page_files_are_on():
    s = Settings(_env_file=None, vllm_api_servers=2)
    argv = serve_argv(s, 1, "t", Path("/dev/shm/ocr-pages-1"))
    assert argv[argv.index("--allowed-local-media-path") + 1] == "/dev/shm/ocr-pages-1"
    assert "--allowed-local-media-path" not in serve_argv(s, 1, "t")


@pytest.mark.parametrize("on", [True, False])
def test_the_managed_engine_sends_a_file_while_the_page_is_in_flight(tmp_path, on):
    s = Settings(_env_file=None, data_dir=tmp_path, vllm_api_servers=2, vllm_page_files=on)
    engine = ManagedVLLMServeEngine(s)
    assert (engine.page_files is not None) is on
    if engine.page_files:
        engine.page_files.open()
    page = scan_page()
    req = pipeline.build_request(s, page, None, engine=engine)

    async def send() -> tuple[str, Path | None]:
        async with engine.page_ref(req) as url:
            if not on:
                return url, None
            path = Path(url.removeprefix("file://"))
            with Image.open(path) as back:
                back.load()
                assert same_pixels(back, page)
            return url, path

    url, path = asyncio.run(send())
    if on:
        assert url.startswith("file:///") and path is not None and not path.exists()  # removed once answered
        assert engine.info()["page_files"]["written"] == 1
    else:
        assert url.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as back:
            assert same_pixels(back.convert("RGB"), page)


@pytest.mark.parametrize("sources", [True, False])
def test_an_upload_goes_to_vllm_as_it_is_unless_page_sources_are_off(tmp_path, scan_png, sources):
    """VLLM_PAGE_SOURCES (default on): an upright RGB PNG is not decoded here, and its page file is the upload
    itself (vLLM's API processes decode it); off, it is decoded here and its pixels are the file, as before."""
    s = Settings(_env_file=None, data_dir=tmp_path, vllm_api_servers=2, vllm_page_sources=sources)
    engine = ManagedVLLMServeEngine(s)
    engine.page_files.open()

    async def send() -> tuple[Path, bytes, Image.Image]:
        image, _, source = await pipeline.decode_page(engine, s, scan_png)
        assert source == ("image/png", scan_png)  # either way the file could stand for the page
        req = pipeline.build_request(s, image, None, engine=engine, source=source)
        async with engine.page_ref(req) as url:
            path = Path(url.removeprefix("file://"))
            return path, path.read_bytes(), image

    path, sent, image = asyncio.run(send())
    assert engine.lazy_pages is sources and not path.exists()
    assert engine.info()["page_files"]["uploads"] == int(sources)
    if sources:
        assert path.suffix == ".png" and sent == scan_png
    else:
        assert path.suffix == ".ppm"
        with Image.open(io.BytesIO(sent)) as back:
            assert same_pixels(back, image)
    # Not decoded here: a file corrupt inside its pixels is only found out by whoever decodes it.
    bad = cut_inside(scan_png)
    if sources:
        assert asyncio.run(pipeline.decode_page(engine, s, bad))[2] == ("image/png", bad)
    else:
        with pytest.raises(InputError, match="could not be decoded"):
            asyncio.run(pipeline.decode_page(engine, s, bad))
