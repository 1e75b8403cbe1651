"""What a page file costs on each side, per A4 page (CPU, no vLLM needed).

Reading (vLLM's API process): vLLM 0.26's image loader (`ImageMediaIO.load_file`: the file's bytes, Pillow's open,
`exif_transpose`, load) then the DEVICE_VIEWS processor's tensor (`vllm_views.page_tensor`), against this service's
media connector (`vllm_page_loader.read_page`: one read into the tensor). Writing (this service): a page file as
engines/page_files.py writes it (Pillow's PPM save into a new file), and its bytes written into a new file against
over an existing one (memory the kernel has already allocated: no allocating and zeroing). An upload, end to end
on each side: this service decoding it and writing its pixels (VLLM_PAGE_SOURCES=false) against opening it
undecoded and writing the upload itself (the default); and the connector reading each file, where the upload's
decode now happens (OpenCV for a plain PNG, against Pillow as without OpenCV). Prints milliseconds per page and
the ratios; ratios carry over to other machines better than the times.

    python bench/page_files_bench.py --pages 20
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pages import page_png

from engines import vllm_page_loader, vllm_views
from engines.page_files import PageFiles, choose_folder
from engines.vllm_page_loader import read_page
from process.image_process import load_page

MAX_PIXELS = 60_000_000


def per_page_ms(fn: Callable[[int], object], pages: int) -> float:
    fn(0)  # warm
    t0 = time.perf_counter()
    for i in range(pages):
        fn(i)
    return (time.perf_counter() - t0) / pages * 1000


def vllm_loader(path: Path) -> torch.Tensor:
    """vLLM's ImageMediaIO.load_file and the processor's page tensor, as the default connector does it."""
    image = Image.open(io.BytesIO(path.read_bytes()))
    image = ImageOps.exif_transpose(image)
    image.load()
    return vllm_views.page_tensor(image.convert("RGB") if image.mode != "RGB" else image)


def write(path: Path, data: bytes, mode: str) -> None:
    with path.open(mode) as f:
        f.write(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=20)
    args = ap.parse_args()
    upload = page_png(0)  # an A4 PNG at 150 dpi, as the GPU bench sends
    page = Image.open(io.BytesIO(upload)).convert("RGB")
    folder = choose_folder(Path(tempfile.mkdtemp()))
    files = PageFiles(folder)
    files.open()
    try:
        paths = [files.write(page) for _ in range(args.pages)]
        assert all(p is not None for p in paths)
        assert torch.equal(read_page(paths[0]), vllm_loader(paths[0]))  # the same pixels either way
        read_vllm = per_page_ms(lambda i: vllm_loader(paths[i % len(paths)]), args.pages)
        read_ours = per_page_ms(lambda i: read_page(paths[i % len(paths)]), args.pages)
        for p in paths:
            p.unlink()
        fresh: list[Path] = []
        write_pillow = per_page_ms(lambda i: fresh.append(files.write(page)), args.pages)  # as the service does
        raw = fresh[0].read_bytes()
        write_new = per_page_ms(lambda i: write(folder / f"new{i}.ppm", raw, "wb"), args.pages)
        write_over = per_page_ms(lambda i: write(fresh[i % len(fresh)], raw, "r+b"), args.pages)  # no truncation
        pixels, uploads = [], []
        sources = [page_png(i) for i in range(args.pages)]  # all different, as in a burst
        service_pixels = per_page_ms(
            lambda i: pixels.append(files.write(load_page(sources[i], MAX_PIXELS)[0])), args.pages
        )

        def as_upload(i: int) -> None:
            image, _, source = load_page(sources[i], MAX_PIXELS, lazy=True)
            uploads.append(files.write(image, source))

        service_upload = per_page_ms(as_upload, args.pages)
        assert uploads[0].suffix == ".png" and torch.equal(read_page(uploads[0]), read_page(pixels[0]))
        api_pixels = per_page_ms(lambda i: read_page(pixels[i % len(pixels)]), args.pages)
        api_upload = per_page_ms(lambda i: read_page(uploads[i % len(uploads)]), args.pages)
        opencv, vllm_page_loader.cv2 = vllm_page_loader.cv2, None  # the connector without OpenCV: Pillow decodes
        api_upload_pillow = per_page_ms(lambda i: read_page(uploads[i % len(uploads)]), args.pages)
        vllm_page_loader.cv2 = opencv
        print(json.dumps({
            "page": f"{page.width}x{page.height} RGB", "folder": str(folder.parent), "pages": args.pages,
            "read_vllm_loader_ms": round(read_vllm, 2), "read_page_files_connector_ms": round(read_ours, 2),
            "read_ratio": round(read_vllm / read_ours, 1),
            "write_page_file_ms": round(write_pillow, 2),
            "write_bytes_new_file_ms": round(write_new, 2), "write_bytes_over_existing_ms": round(write_over, 2),
            "write_ratio": round(write_new / write_over, 1),
            "upload_service_pixels_ms": round(service_pixels, 2),
            "upload_service_as_uploaded_ms": round(service_upload, 2),
            "upload_service_ratio": round(service_pixels / service_upload, 1),
            "upload_api_read_pixels_ms": round(api_pixels, 2), "upload_api_decode_upload_ms": round(api_upload, 2),
            "upload_api_decode_upload_pillow_ms": round(api_upload_pillow, 2),
            "upload_api_decode_ratio_pillow_vs_opencv": round(api_upload_pillow / api_upload, 2),
        }))  # fmt: skip
    finally:
        files.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
