"""A document (image or PDF) through the service into an output folder; the same folder serves every output.

Folder of one document (`stem` = sanitised file name):
    pages/0001.json        one page's result, written as soon as it is done (resume skips these)
    images/1_0.jpg         figure crops, linked from the Markdown as images/{page}_{k}.jpg
    page_images/0001.jpg   the page as the engine saw it, when keep_page_images (the web page shows it)
    {stem}.md              combined Markdown, pages separated by PAGE_SPLIT
    {stem}_det.mmd         the raw model output with grounding, pages separated likewise
    {stem}_layouts.pdf     every page with its labelled boxes (img2pdf), when asked for
    result.json            the manifest entry: name, kind, pages, per-page results
Pages render in worker processes and at most `window` pages are in memory at once.
process_document = plan_document, then process_page for each page, then finish_document; the Redis job
backend (jobs/distributed.py) runs the three steps as separate tasks on any replica.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

import img2pdf
from PIL import Image

import ocr_utils
import pipeline
from config import Settings
from deepseek_ocr import OCREngine
from errors import InputError
from ocr_utils import safe_name
from process import pdf_process
from process.image_process import sniff_kind

PAGE_SPLIT = "\n\n<--- Page Split --->\n\n"
Progress = Callable[[int, int], None]  # (pages done, pages total)
PageDone = Callable[[dict], None]  # a finished page's record (as written to pages/NNNN.json)
Fetch = Callable[[], Awaitable[bytes | Path]]  # a source fetched when its document's turn comes (an S3 key)


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
    keep_page_images: bool = False

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("password")  # never stored or echoed
        return d


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


def save_page_image(image: Image.Image, out: Path, number: int) -> Path:
    """The page as a JPEG under page_images/ (written atomically); returns its path."""
    path = out / "page_images" / f"{number:04d}.jpg"
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    image.convert("RGB").save(tmp, "JPEG", quality=85)
    tmp.replace(path)
    return path


@dataclass
class DocPlan:
    """One checked document: its kind ("pdf" or an image kind) and the page numbers to OCR."""

    kind: str
    numbers: list[int]
    page_count: int


def plan_document(
    engine: OCREngine, settings: Settings, name: str, data: bytes, out: Path, opts: DocOptions
) -> DocPlan:
    """Check a document and list its pages; a PDF is kept as out/input.pdf for its pages (process_page).
    Raises InputError (bad prompt, unreadable PDF, too many pages) before anything is OCR'd."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pages").mkdir(exist_ok=True)
    pipeline.validate(engine, settings, opts.prompt, opts.mode, None)
    kind = sniff_kind(data)
    if kind == "unknown" and name.lower().endswith(".pdf"):
        kind = "pdf"  # let the PDF opener say what is wrong with it
    if kind != "pdf":
        return DocPlan(kind, [1], 1)
    pdf_path = out / "input.pdf"
    if not pdf_path.exists():
        pdf_process.open_pdf(data, opts.password).close()  # clear errors before anything is written
        tmp = pdf_path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        tmp.replace(pdf_path)  # atomic: replicas may plan the same document after a crash
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
    return DocPlan(kind, [i + 1 for i in indexes], page_count)


def page_path(out: Path, number: int) -> Path:
    return out / "pages" / f"{number:04d}.json"


async def process_page(
    engine: OCREngine,
    settings: Settings,
    renderer: Renderer,
    out: Path,
    kind: str,
    number: int,
    opts: DocOptions,
    image_data: bytes | None = None,
) -> dict | None:
    """OCR one page into out/pages/NNNN.json (written atomically, so a page done twice is still one file),
    with its crops and layout image. A PDF page comes from out/input.pdf, an image from `image_data`.
    Returns the page's record, or None when it was already done. One bad PDF page becomes an error record;
    a bad image, or 503 (engine down), raises InputError."""
    record_path = page_path(out, number)
    if record_path.exists():  # done before (a restart, or another replica)
        return None
    if kind == "pdf":
        image, used_dpi = await renderer.render(
            out / "input.pdf", number - 1, opts.dpi, opts.password, settings.max_image_pixels
        )
        info, source = {"format": "PDF", "page": number}, None
    else:
        image, info, source = await pipeline.decode_page(engine, settings, image_data)
        used_dpi = None
    if opts.keep_page_images:
        await asyncio.to_thread(save_page_image, image, out, number)
    try:
        page = await pipeline.ocr_page(
            engine, settings, image, opts.prompt, image_info=info, source=source,
            page=number if kind == "pdf" else None, mode=opts.mode, max_tokens=opts.max_tokens,
        )  # fmt: skip
    except InputError as e:  # one bad page (a timeout) must not sink a PDF; 503 (engine down) does
        if kind != "pdf" or e.status == 503:
            raise
        return save_error_page(out, number, e, used_dpi)
    await asyncio.to_thread(_save_page_outputs, page, number, out, opts, kind == "pdf")
    return _write_page(out, _page_record(page, number, used_dpi))


def save_error_page(out: Path, number: int, error: InputError, dpi: int | None = None) -> dict:
    """A PDF page that failed: an empty page carrying the error, so the document still completes."""
    return _write_page(out, {**_empty_page(number, dpi), **error.body()})


def _write_page(out: Path, record: dict) -> dict:
    path = page_path(out, record["page"])
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # atomic: a kill never leaves half a page, and a page written twice is one file
    return record


async def process_document(
    engine: OCREngine,
    settings: Settings,
    renderer: Renderer,
    name: str,
    source: bytes | Path | Fetch,
    out: Path,
    opts: DocOptions,
    progress: Progress | None = None,
    page_done: PageDone | None = None,
) -> dict:
    """OCR one image or PDF into `out`; returns the manifest entry (also saved as out/result.json).
    `progress` hears (done, total) at the start and after each page; `page_done` gets each new page's record.
    A document finished before (out/result.json exists: a resumed job) is not read or fetched again."""
    if (out / "result.json").exists():
        entry = json.loads((out / "result.json").read_text())
        if progress:
            progress(entry["pages_processed"], entry["pages_processed"])
        return entry
    if callable(source):
        source = await source()
    data = source.read_bytes() if isinstance(source, Path) else source
    t0 = time.perf_counter()
    plan = plan_document(engine, settings, name, data, out, opts)
    image_data = None if plan.kind == "pdf" else data
    del data  # a PDF's pages come from out/input.pdf
    numbers = plan.numbers
    done = sum(page_path(out, n).exists() for n in numbers)
    if progress:
        progress(done, len(numbers))
    window = asyncio.Semaphore(max(2, min(2 * engine.capacity(), 64)))  # pages in memory at once

    async def one(number: int) -> None:
        nonlocal done
        async with window:
            record = await process_page(engine, settings, renderer, out, plan.kind, number, opts, image_data)
        if record is None:  # done before a restart
            return
        done += 1
        if progress:
            progress(done, len(numbers))
        if page_done:
            page_done(record)

    await asyncio.gather(*(one(n) for n in numbers))
    seconds = time.perf_counter() - t0
    return await asyncio.to_thread(
        finish_document, out, out.name, name, plan.kind, numbers, plan.page_count, opts, seconds
    )


def finish_document(
    out: Path, stem: str, name: str, kind: str, numbers: list[int], page_count: int, opts: DocOptions, seconds: float
) -> dict:
    """Combine a document's pages into its Markdown, raw output, layouts PDF and manifest entry."""
    pages = [json.loads(page_path(out, n).read_text()) for n in numbers]
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
    items: list[tuple[str, bytes | Path | Fetch]],
    root: Path,
    opts: DocOptions,
    progress: Callable[[int, int, int], None] | None = None,
    page_done: Callable[[int, dict], None] | None = None,
    doc_done: Callable[[int, dict], Awaitable[None]] | None = None,
) -> list[dict]:
    """Several documents into root/{stem}/; a bad file gets an error entry, never fails the others.
    Callbacks get the file's index first: progress(i, done, total), page_done(i, record), and
    doc_done(i, entry) is awaited after each document, success or not."""
    stems = unique_stems([name for name, _ in items])
    files_at_once = asyncio.Semaphore(max(1, settings.num_workers))

    async def one(i: int, name: str, source: bytes | Path | Fetch) -> dict:
        async with files_at_once:
            try:
                cb = (lambda d, t: progress(i, d, t)) if progress else None
                on_page = (lambda rec: page_done(i, rec)) if page_done else None
                entry = await process_document(
                    engine, settings, renderer, name, source, root / stems[i], opts, cb, on_page
                )
            except InputError as e:
                entry = {"filename": name, "stem": stems[i], "success": False, **e.body()}
                entry["error"]["status"] = e.status
            if doc_done:
                await doc_done(i, entry)
            return entry

    return list(await asyncio.gather(*(one(i, n, s) for i, (n, s) in enumerate(items))))


_SKIP_IN_ZIP = {"pages", "input.pdf", "result.json", "layouts", "page_images"}


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
