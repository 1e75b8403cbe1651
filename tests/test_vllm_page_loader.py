"""The page-file media connector (engines/vllm_page_loader.py): a page file read straight into the tensor the
DEVICE_VIEWS processor sends holds the pixels Pillow would have decoded; anything else is left to vLLM's loader.

vLLM is not installed here: the connector's base class is then a plain object, so what is tested is its reading,
its choice of files and the managed engine's choice of connector; vLLM calling it is checked on the GPU.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import cv2
import numpy as np
import pytest
import torch
from conftest import BROKEN, DOCLING, cut_inside, scan_page
from PIL import Image

from config import Settings
from engines import vllm_page_loader, vllm_views
from engines.page_files import PageFiles
from engines.vllm_front_stats import FETCHED
from engines.vllm_page_loader import PageFileConnector, page_file, read_page
from engines.vllm_serve_engine import PAGE_CONNECTOR, child_env, page_connector
from process.image_process import load_page


@pytest.fixture
def files(tmp_path):
    pages = PageFiles(tmp_path / "pages")
    pages.open()
    yield pages
    pages.close()


def test_a_page_file_reads_as_the_processors_tensor(files):
    page = scan_page()
    for image in (page, page.convert("L")):  # PPM and PGM, as PageFiles writes them
        path = files.write(image)
        got = read_page(path)
        assert got is not None and got.dtype == torch.uint8 and got.is_contiguous()
        assert torch.equal(got, vllm_views.page_tensor(image))  # what the processor made from Pillow's page
        assert vllm_views.page_size(got) == image.size
        got[0, 0, 0] = 1  # its own memory: writable, nothing shared with the file


def test_an_upload_page_file_decodes_to_the_processors_tensor(files, scan_png):
    """VLLM_PAGE_SOURCES: the upload itself is the page file, and Pillow decodes it here as it did in the service."""
    jpeg = (DOCLING / "qr_bill_example.jpg").read_bytes()
    for data, suffix in ((scan_png, ".png"), (jpeg, ".jpg")):
        image, _, source = load_page(data, 60_000_000)
        path = files.write(image, source)
        assert path is not None and path.suffix == suffix and path.read_bytes() == data
        got = read_page(path)
        assert got is not None and got.dtype == torch.uint8 and got.is_contiguous()
        assert torch.equal(got, vllm_views.page_tensor(image))
        got[0, 0, 0] = 1  # writable


def test_opencv_decodes_a_plain_png_to_the_pixels_pillow_decodes(tmp_path, scan_png, monkeypatch):
    """An 8-bit RGB PNG goes through OpenCV (faster), and the tensor is the one Pillow's decode gives."""
    photo = io.BytesIO()
    Image.open(DOCLING / "example_image_01.png").convert("RGB").save(photo, "PNG", optimize=True)
    calls = []
    imdecode = vllm_page_loader.cv2.imdecode
    monkeypatch.setattr(vllm_page_loader.cv2, "imdecode", lambda *a: calls.append(1) or imdecode(*a))
    for data in (scan_png, photo.getvalue()):
        path = tmp_path / "p.png"
        path.write_bytes(data)
        assert vllm_page_loader.plain_png(data)
        fast = read_page(path)
        with monkeypatch.context() as m:
            m.setattr(vllm_page_loader, "cv2", None)  # Pillow's decode, as without OpenCV
            slow = read_page(path)
        assert fast is not None and fast.dtype == torch.uint8 and fast.is_contiguous()
        assert torch.equal(fast, slow)
        fast[0, 0, 0] = 1  # writable
    assert len(calls) == 2


def test_pngs_opencv_would_read_differently_stay_with_pillow(tmp_path):
    rgba = (DOCLING / "example_image_01.png").read_bytes()
    grey16 = (BROKEN / "gray16.png").read_bytes()
    deep = cv2.imencode(".png", np.full((6, 8, 3), 40000, np.uint16))[1].tobytes()  # 16 bits a sample
    exif = Image.Exif()
    exif[0x0112] = 1  # an EXIF block, even an upright one: Pillow reads it, OpenCV may turn by it
    turned = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 20, 30)).save(turned, "PNG", exif=exif)
    for data in (rgba, grey16, deep, turned.getvalue()):
        assert not vllm_page_loader.plain_png(data)
    path = tmp_path / "deep.png"
    path.write_bytes(deep)
    assert torch.equal(read_page(path), torch.from_numpy(np.array(Image.open(path))))  # Pillow's 8-bit reading


def test_uploads_this_does_not_take_are_left_to_vllm_and_corrupt_ones_fail(tmp_path, scan_png):
    grey = tmp_path / "g.png"
    Image.new("L", (40, 30), 128).save(grey)  # vLLM's loader converts it to RGB
    assert read_page(grey) is None
    bad = tmp_path / "b.png"
    bad.write_bytes(cut_inside(scan_png))  # vLLM's loader would fail on it too
    with pytest.raises(OSError):
        read_page(bad)


def test_headers_this_does_not_parse_are_left_to_vllm(tmp_path):
    commented = tmp_path / "c.ppm"
    commented.write_bytes(b"P6\n# a comment\n2 1\n255\n" + bytes(6))
    assert read_page(commented) is None
    deep = tmp_path / "d.pgm"
    Image.new("I;16", (4, 3), 300).save(deep, "PPM")  # 16-bit samples (maxval 65535)
    assert read_page(deep) is None
    truncated = tmp_path / "t.ppm"
    truncated.write_bytes(b"P6\n4 4\n255\n" + bytes(10))
    with pytest.raises(ValueError, match="truncated"):
        read_page(truncated)


def test_only_page_files_in_the_allowed_folder_are_taken(files, tmp_path):
    allowed = files.folder.resolve()
    path = files.write(scan_page())
    assert page_file(path.as_uri(), allowed) == path
    spaced = files.folder / "a page.ppm"  # as_uri() percent-encodes the space
    assert page_file(spaced.as_uri(), allowed) == spaced
    outside = tmp_path / "x.ppm"
    assert page_file(outside.as_uri(), allowed) is None
    assert page_file((files.folder / ".." / "x.ppm").as_uri(), allowed) is None
    assert page_file((files.folder / "a.png").as_uri(), allowed) == files.folder / "a.png"  # an upload, as is
    assert page_file((files.folder / "a.gif").as_uri(), allowed) is None
    assert page_file("http://example.com/a.ppm", allowed) is None
    assert page_file("data:image/png;base64,AAAA", allowed) is None
    assert page_file(path.as_uri(), None) is None  # vLLM was not allowed any folder


def test_the_connector_returns_the_tensor_for_a_page_file(files):
    page = scan_page()
    path = files.write(page)
    connector = PageFileConnector()
    connector.allowed_local_media_path = files.folder.resolve()  # what vLLM's __init__ sets
    before, t0 = PageFileConnector.pages_read, time.time()
    got = asyncio.run(connector.fetch_image_async(path.as_uri()))
    assert t0 <= getattr(got, FETCHED) <= time.time()  # ocr_vllm_prep_seconds counts from the load
    assert torch.equal(got, torch.from_numpy(np.asarray(page)))
    assert torch.equal(connector.fetch_image(path.as_uri()), got)
    assert PageFileConnector.pages_read == before + 2


def test_the_managed_engine_names_the_connector_only_where_the_processor_takes_tensors():
    on = Settings(engine="vllm", vllm_page_files=True, device_views=True)
    assert PAGE_CONNECTOR == vllm_page_loader.NAME
    assert page_connector(on, "DeepSeek-OCR") == {"VLLM_MEDIA_CONNECTOR": PAGE_CONNECTOR}
    assert page_connector(on, "DeepSeek-OCR-2") == {}  # its processor takes Pillow pages
    assert page_connector(on, None) == {}  # an unknown model
    assert page_connector(on.model_copy(update={"device_views": False}), "DeepSeek-OCR") == {}
    assert page_connector(on.model_copy(update={"vllm_page_files": False}), "DeepSeek-OCR") == {}


def test_the_child_gets_the_connector_for_a_local_deepseek_ocr_folder(tmp_path):
    ocr, ocr2 = tmp_path / "ocr", tmp_path / "ocr2"
    for folder, arch in ((ocr, "DeepseekOCRForCausalLM"), (ocr2, "DeepseekOCR2ForCausalLM")):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": [arch]}))
    settings = Settings(engine="vllm", model_path=str(ocr), vllm_page_files=True, device_views=True)
    env = child_env(settings, {"PATH": "/usr/bin"}, {})
    assert env["VLLM_MEDIA_CONNECTOR"] == PAGE_CONNECTOR and env["DEVICE_VIEWS"] == "1"
    assert child_env(settings, {"VLLM_MEDIA_CONNECTOR": "http"}, {})["VLLM_MEDIA_CONNECTOR"] == "http"  # set: kept
    other = settings.model_copy(update={"model_path": str(ocr2)})
    assert "VLLM_MEDIA_CONNECTOR" not in child_env(other, {}, {})
