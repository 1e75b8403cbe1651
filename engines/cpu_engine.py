"""The embedded CPU engine: PP-OCRv6 text models, a layout model and a table model, all ONNX files shipped
inside their wheels (engines/cpu_models.py), behind the engine seam.

It really reads text, offline, with no GPU and no weights to download, and answers the DeepSeek prompts
it can honour with DeepSeek-shaped output: grounded Markdown with DeepSeek-OCR's region labels (tables as
HTML), grounded lines, free text, Markdown and Locate. Pages scanned sideways or upside down are turned
first; a page in a script the model cannot read gets a warning. Figure/description prompts get a 422
naming the engine that can answer them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from PIL import Image

from config import Settings
from deepseek_ocr import OCREngine, OCRRequest, OCRResult, Task
from engines import cpu_orientation, cpu_script, layout
from engines.cpu_models import MODEL_NAME, Models, TextLine
from engines.layout import Line, Zone
from process.image_process import tile_boxes

log = logging.getLogger("ocr.cpu")
PAD = 32  # text that touches the image edge is misread; a margin of page colour fixes it


def pad_page(bgr: np.ndarray) -> np.ndarray:
    """The image with a PAD-pixel margin of its own border colour (median of the edge pixels)."""
    edges = np.concatenate([bgr[0], bgr[-1], bgr[:, 0], bgr[:, -1]])
    colour = [int(v) for v in np.median(edges, axis=0)]
    return cv2.copyMakeBorder(np.ascontiguousarray(bgr), PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=colour)


_PIECE = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """A stand-in for a tokenizer count: words and punctuation marks."""
    return len(_PIECE.findall(text))


def mark_bullets(gray: np.ndarray, lines: list[Line]) -> None:
    """Flags lines with a list bullet left of them: one compact, solid blob of ink within 2.5 line heights
    of the line's start, at most half a line high, centred on the line, and nothing else there."""
    for ln in lines:
        h = ln.h
        x0, x1 = int(max(0, ln.x0 - 2.5 * h)), int(ln.x0) - 1
        y0, y1 = int(ln.y0), int(ln.y1) + 1
        if x1 - x0 < 0.5 * h or h < 6:
            continue
        ink = (gray[y0:y1, x0:x1] < 128).astype(np.uint8)
        stats = cv2.connectedComponentsWithStats(ink, connectivity=8)[2]
        blobs = [s for s in stats[1:] if s[4] >= 4]
        if len(blobs) != 1:
            continue
        by, bw, bh, area = blobs[0][1:5]
        centred = abs(by + bh / 2 - h / 2) <= 0.2 * h
        if 0.15 * h <= bw <= 0.6 * h and 0.15 * h <= bh <= 0.6 * h and area >= 0.5 * bw * bh and centred:
            ln.bullet = True


def _box_lines(found: list[TextLine], dx: float, dy: float, w: float, h: float) -> list[Line]:
    out = []
    for t in found:
        xs = np.clip(t.quad[:, 0] - dx, 0, w)
        ys = np.clip(t.quad[:, 1] - dy, 0, h)
        out.append(Line(float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()), t.text, t.score))
    return out


class CPUEngine(OCREngine):
    name = "cpu"
    tasks = frozenset({Task.DOCUMENT_GROUNDED, Task.OCR_GROUNDED, Task.FREE_OCR, Task.MARKDOWN, Task.LOCATE})

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.model_name = f"{MODEL_NAME} (embedded CPU engine)"
        self._workers: queue.Queue[Models] = queue.Queue()
        self._pool: ThreadPoolExecutor | None = None

    def capacity(self) -> int:
        return self.settings.num_workers

    async def start(self) -> None:
        n = self.settings.num_workers
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="cpu-ocr")
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._load, n)
        except Exception as e:  # the app keeps serving /health and says why
            self.error = f"the CPU engine's models could not load: {e}"
            log.exception("CPU engine failed to start")
            return
        self.ready = True
        log.info("CPU engine ready: %d worker(s), %s", n, MODEL_NAME)

    def _load(self, n: int) -> None:
        # Workers x threads = cores: oversubscribed ONNX threads cost more than they give.
        threads = self.settings.cpu_engine_threads or max(1, (os.cpu_count() or 1) // n)
        for _ in range(n):
            self._workers.put(Models(threads))

    async def stop(self) -> None:
        await super().stop()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, req: OCRRequest) -> OCRResult:
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run_sync, req)

    def _read(self, models: Models, bgr: np.ndarray, req: OCRRequest) -> list[Line]:
        """Text lines in pixel coordinates of `bgr`; Gundam-style tiling reads bands of a tall page apart."""
        h, w = bgr.shape[:2]
        bands = [(0, h)]
        if req.plan.tiles_h > 1 and req.tiling:
            bands = [(b[1], b[3]) for b in tile_boxes(w, h, req.plan)[:: req.plan.tiles_w]]
        lines: list[Line] = []
        for top, bottom in bands:
            margin = 48 if len(bands) > 1 else 0
            y0, y1 = max(0, top - margin), min(h, bottom + margin)
            for ln in _box_lines(models.read(pad_page(bgr[y0:y1])), PAD, PAD - y0, w, h):
                if len(bands) == 1 or top <= ln.cy < bottom:  # each line belongs to one band
                    lines.append(ln)
        return lines

    def _tables(self, models: Models, bgr: np.ndarray, blocks: list[layout.Block]) -> None:
        """Each table block's HTML from the table model, cell text from the lines already read."""
        h, w = bgr.shape[:2]
        for b in blocks:
            if b.label != "table" or not b.lines or not models.reads_tables:
                continue
            x0, y0, x1, y1 = b.bbox
            x0, y0, x1, y1 = max(0, int(x0) - 4), max(0, int(y0) - 4), min(w, int(x1) + 4), min(h, int(y1) + 4)
            boxes = np.array([[ln.x0 - x0, ln.y0 - y0, ln.x1 - x0, ln.y1 - y0] for ln in b.lines])
            try:
                html = models.table_html(
                    np.ascontiguousarray(bgr[y0:y1, x0:x1]), boxes, [(ln.text, ln.score) for ln in b.lines]
                )
            except Exception:  # a table the model cannot parse keeps the geometric grid
                log.exception("table model failed")
                continue
            b.html = layout.complete_table(html, b.lines)

    def _run_sync(self, req: OCRRequest) -> OCRResult:
        t0 = time.perf_counter()
        img: Image.Image = req.image
        rgb = np.asarray(img.convert("RGB"))
        w, h = img.size
        task = req.spec.task
        models = self._workers.get()
        try:
            bgr = np.ascontiguousarray(rgb[:, :, ::-1])
            lines = self._read(models, bgr, req)
            turns, lines = cpu_orientation.upright(models, bgr, lines, lambda im: self._read(models, im, req))
            page = np.ascontiguousarray(np.rot90(bgr, turns)) if turns else bgr
            pw, ph = page.shape[1], page.shape[0]
            zones: list[Zone] = []
            if task in (Task.DOCUMENT_GROUNDED, Task.MARKDOWN):
                zones = [
                    Zone(layout.ZONE_LABELS.get(r.label, "text"), *r.box, score=r.score) for r in models.layout(page)
                ]
            t1 = time.perf_counter()
            warnings = cpu_script.warnings(page, lines)
            if task in (Task.DOCUMENT_GROUNDED, Task.MARKDOWN):
                mark_bullets(cv2.cvtColor(page, cv2.COLOR_BGR2GRAY), lines)
            if task == Task.LOCATE:
                blocks: list[layout.Block] = []
            else:
                blocks = layout.build_blocks(lines, pw, ph, zones)
                self._tables(models, page, blocks)
        finally:
            self._workers.put(models)
        box_map = cpu_orientation.box_mapper(turns, pw, ph)  # boxes answer in the image as sent
        if turns:
            turned = {1: "90° counterclockwise", 2: "180°", 3: "90° clockwise"}[turns]
            warnings.append(f"the page was turned {turned} before reading (it was scanned rotated)")
        if task == Task.LOCATE:
            text = layout.locate(lines, req.spec.target or "", w, h, box_map)
        elif task == Task.DOCUMENT_GROUNDED:
            text = layout.render_document(blocks, w, h, grounded=True, box_map=box_map)
        elif task == Task.MARKDOWN:
            text = layout.render_document(blocks, w, h, grounded=False)
        elif task == Task.OCR_GROUNDED:
            text = layout.render_lines_grounded(blocks, w, h, box_map)
        else:
            text = layout.render_free(blocks)
        finish = "stop"
        pieces = list(_PIECE.finditer(text))
        if len(pieces) > req.max_tokens:  # honour max_tokens like a decoder would: cut, say "length"
            text = text[: pieces[req.max_tokens - 1].end()]
            finish = "length"
        return OCRResult(
            text=text,
            prompt_tokens=req.plan.image_tokens + estimate_tokens(req.spec.prompt),
            output_tokens=min(len(pieces), req.max_tokens),
            finish_reason=finish,
            timings={"inference": round(t1 - t0, 4), "postprocess": round(time.perf_counter() - t1, 4)},
            warnings=warnings,
        )
