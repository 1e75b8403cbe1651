"""A document (image or PDF) through the service into an output folder; the same folder serves every output.

Folder of one document (`stem` = sanitised file name):
    pages/0001.json        one page's result, written as soon as it is done (resume skips these)
    images/1_0.jpg         figure crops, linked from the Markdown as images/{page}_{k}.jpg
    {stem}.md              combined Markdown, pages separated by PAGE_SPLIT
    {stem}_det.mmd         the raw model output with grounding, pages separated likewise
    {stem}_layouts.pdf     every page with its labelled boxes (img2pdf), when asked for
    result.json            the manifest entry: name, kind, pages, per-page results
Pages render in worker processes and at most `window` pages are in memory at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import unicodedata
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

import img2pdf

import ocr_utils
import pipeline
from config import Settings
from deepseek_ocr import OCREngine
from errors import InputError
from process import pdf_process
from process.image_process import load_image, sniff_kind

PAGE_SPLIT = "\n\n<--- Page Split --->\n\n"
Progress = Callable[[int, int], None]


@dataclass
class DocOptions:
    prompt: str | None = None
    mode: str | None = None
    dpi: int = 144
    pages: str | None = None
    password: str | None = None
    draw_layouts: bool = False
    extract_images: bool = True
    max_tokens: int | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("password")  # never stored or echoed
        return d


def safe_name(name: str | None, default: str = "file") -> str:
    """A file name that is safe as one path component: no folders, no '..', printable, bounded length."""
    name = unicodedata.normalize("NFKC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.\-]+", "_", name, flags=re.UNICODE).strip("._") or default
    stem, dot, ext = name.rpartition(".")
    if dot and len(ext) <= 8:
        return stem[:80].strip("._") + "." + ext if stem.strip("._") else default + "." + ext
    return name[:90]


def unique_stems(names: list[str]) -> list[str]:
    """Sanitised stems, made unique: a.png, a.pdf -> a, a_2."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        stem = safe_name(n).rsplit(".", 1)[0] or "file"
        count = seen.get(stem.lower(), 0) + 1
        seen[stem.lower()] = count
        out.append(stem if count == 1 else f"{stem}_{count}")
    return out


class Renderer:
    """The shared pool of render processes (created on first use)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None

    @property
    def pool(self):
        if self._pool is None:
            self._pool = pdf_process.make_render_pool(self.workers)
        return self._pool

    async def render(self, path: Path, index: int, dpi: int, password: str | None, max_pixels: int):
        loop = asyncio.get_running_loop()
        args = (str(path), index, dpi, password, max_pixels)
        try:
            raw = await loop.run_in_executor(self.pool, pdf_process.render_page_raw, *args)
        except BrokenProcessPool as e:  # a worker died (a hostile PDF?): replace the pool, fail this page only
            self._pool = None
            raise InputError(
                422, "render_failed", f"page {index + 1} could not be rendered (the renderer crashed)"
            ) from e
        return pdf_process.to_image(raw)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _page_record(page: pipeline.PageResult, number: int, dpi: int | None) -> dict:
    return {
        "page": number,
        "text": page.text,
        "markdown": page.markdown,
        "raw_output": page.raw,
        "regions": [r.as_dict() for r in page.regions],
        "image_size": page.size,
        "dpi": dpi,
        "usage": page.usage(),
        "repetition_collapsed": page.repetition_collapsed,
        "warnings": page.warnings,
    }


def _empty_page(number: int, dpi: int | None) -> dict:
    usage = {"prompt_tokens": 0, "output_tokens": 0, "finish_reason": "error", "timings": {}}
    return {
        "page": number, "text": "", "markdown": "", "raw_output": "", "regions": [], "image_size": None,
        "dpi": dpi, "usage": usage, "repetition_collapsed": False, "warnings": [],
    }  # fmt: skip


def _save_page_outputs(page: pipeline.PageResult, number: int, out: Path, opts: DocOptions, is_pdf: bool) -> None:
    if opts.extract_images:
        for region, crop in ocr_utils.crop_regions(page.image, page.regions, {"image"}):
            (out / "images").mkdir(exist_ok=True)
            name = f"{number}_{region.image_index}.jpg" if is_pdf else f"{region.image_index}.jpg"  # as linked
            crop.convert("RGB").save(out / "images" / name, "JPEG", quality=90)
    if opts.draw_layouts:
        (out / "layouts").mkdir(exist_ok=True)
        ocr_utils.draw_boxes(page.image, page.regions).save(out / "layouts" / f"{number:04d}.jpg", "JPEG", quality=85)


async def process_document(
    engine: OCREngine,
    settings: Settings,
    renderer: Renderer,
    name: str,
    source: bytes | Path,
    out: Path,
    opts: DocOptions,
    progress: Progress | None = None,
) -> dict:
    """OCR one image or PDF into `out`; returns the manifest entry (also saved as out/result.json)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pages").mkdir(exist_ok=True)
    stem = out.name
    data = source.read_bytes() if isinstance(source, Path) else source
    pipeline.validate(engine, settings, opts.prompt, opts.mode, None)
    t0 = time.perf_counter()
    kind = sniff_kind(data)
    if kind == "unknown" and name.lower().endswith(".pdf"):
        kind = "pdf"  # let the PDF opener say what is wrong with it
    if kind == "pdf":
        pdf_path = out / "input.pdf"
        if not pdf_path.exists():
            pdf_process.open_pdf(data, opts.password).close()  # clear errors before anything is written
            pdf_path.write_bytes(data)
        del data
        doc = pdf_process.open_pdf(pdf_path, opts.password)
        indexes = pdf_process.parse_pages(opts.pages, doc.page_count)
        page_count = doc.page_count
        doc.close()
        if len(indexes) > settings.max_pdf_pages:
            raise InputError(
                413,
                "too_many_pages",
                f"{len(indexes)} pages selected; the limit is {settings.max_pdf_pages} (MAX_PDF_PAGES)",
            )
        numbers = [i + 1 for i in indexes]
    else:
        numbers = [1]
        page_count = 1

    done = sum((out / "pages" / f"{n:04d}.json").exists() for n in numbers)
    if progress:
        progress(done, len(numbers))
    window = asyncio.Semaphore(max(2, min(2 * engine.capacity(), 64)))  # pages in memory at once

    async def one(number: int) -> None:
        nonlocal done
        record_path = out / "pages" / f"{number:04d}.json"
        if record_path.exists():  # done before a restart
            return
        async with window:
            if kind == "pdf":
                image, used_dpi = await renderer.render(
                    out / "input.pdf", number - 1, opts.dpi, opts.password, settings.max_image_pixels
                )
                info = {"format": "PDF", "page": number}
            else:
                image, info = await asyncio.to_thread(load_image, data, settings.max_image_pixels)
                used_dpi = None
            try:
                page = await pipeline.ocr_page(
                    engine, settings, image, opts.prompt, image_info=info,
                    page=number if kind == "pdf" else None, mode=opts.mode, max_tokens=opts.max_tokens,
                )  # fmt: skip
            except InputError as e:  # one bad page (a timeout) must not sink a PDF; 503 (engine down) does
                if kind != "pdf" or e.status == 503:
                    raise
                record = {**_empty_page(number, used_dpi), **e.body()}
            else:
                await asyncio.to_thread(_save_page_outputs, page, number, out, opts, kind == "pdf")
                record = _page_record(page, number, used_dpi)
            tmp = record_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(record_path)  # atomic: a kill never leaves half a page
        done += 1
        if progress:
            progress(done, len(numbers))

    await asyncio.gather(*(one(n) for n in numbers))
    return await asyncio.to_thread(_finish, out, stem, name, kind, numbers, page_count, opts, time.perf_counter() - t0)


def _finish(
    out: Path, stem: str, name: str, kind: str, numbers: list[int], page_count: int, opts: DocOptions, seconds: float
) -> dict:
    pages = [json.loads((out / "pages" / f"{n:04d}.json").read_text()) for n in numbers]
    (out / f"{stem}.md").write_text(PAGE_SPLIT.join(p["markdown"] for p in pages))
    (out / f"{stem}_det.mmd").write_text(PAGE_SPLIT.join(p["raw_output"] for p in pages))
    files = [f"{stem}.md", f"{stem}_det.mmd"]
    layouts = sorted((out / "layouts").glob("*.jpg")) if (out / "layouts").exists() else []
    if opts.draw_layouts and layouts:
        with open(out / f"{stem}_layouts.pdf", "wb") as f:
            img2pdf.convert([str(p) for p in layouts], outputstream=f)
        shutil.rmtree(out / "layouts")
        files.append(f"{stem}_layouts.pdf")
    images = (
        sorted(p.relative_to(out).as_posix() for p in (out / "images").glob("*.jpg"))
        if (out / "images").exists()
        else []
    )
    entry = {
        "filename": name,
        "stem": stem,
        "kind": kind,
        "success": True,
        "page_count": page_count,
        "pages_processed": len(pages),
        "text": "\n\n".join(p["text"] for p in pages),
        "markdown": PAGE_SPLIT.join(p["markdown"] for p in pages),
        "pages": pages,
        "files": files + images,
        "options": opts.as_dict(),
        "seconds": round(seconds, 3),
    }
    (out / "result.json").write_text(json.dumps(entry))
    (out / "input.pdf").unlink(missing_ok=True)  # kept only while pages remain (resume)
    return entry


async def process_many(
    engine: OCREngine,
    settings: Settings,
    renderer: Renderer,
    items: list[tuple[str, bytes | Path]],
    root: Path,
    opts: DocOptions,
    progress: Callable[[int, int, int], None] | None = None,
) -> list[dict]:
    """Several documents into root/{stem}/; a bad file gets an error entry, never fails the others."""
    stems = unique_stems([name for name, _ in items])
    files_at_once = asyncio.Semaphore(max(1, settings.num_workers))

    async def one(i: int, name: str, source: bytes | Path) -> dict:
        async with files_at_once:
            try:
                cb = (lambda d, t: progress(i, d, t)) if progress else None
                return await process_document(engine, settings, renderer, name, source, root / stems[i], opts, cb)
            except InputError as e:
                entry = {"filename": name, "stem": stems[i], "success": False, **e.body()}
                entry["error"]["status"] = e.status
                return entry

    return list(await asyncio.gather(*(one(i, n, s) for i, (n, s) in enumerate(items))))


_SKIP_IN_ZIP = {"pages", "input.pdf", "result.json", "layouts"}


def write_zip(root: Path, entries: list[dict], zip_path: Path) -> Path:
    """The bundle: per file its .md, _det.mmd, layouts PDF and crops under {stem}/, plus results.json."""
    import zipfile

    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            folder = root / entry["stem"]
            if not entry.get("success") or not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder)
                if path.is_file() and rel.parts[0] not in _SKIP_IN_ZIP:
                    zf.write(path, f"{entry['stem']}/{rel.as_posix()}")
        zf.writestr("results.json", json.dumps({"files": entries}, indent=1))
    return zip_path
