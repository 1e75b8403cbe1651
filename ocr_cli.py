"""OCR a folder, images or PDFs into an output folder without running a server.

    python ocr_cli.py scans/ report.pdf -o out/ [--prompt document] [--dpi 144] [--layouts]

Each input gets out/{name}/ with the same files as the service's ZIP ({name}.md, {name}_det.mmd,
{name}_layouts.pdf, images/) plus result.json. Resumable: a finished document (result.json present)
is skipped, and an interrupted PDF continues from its last finished page. Same pipeline and engine
selection (ENGINE, MODEL_PATH, ...) as the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from tqdm import tqdm

from config import get_settings
from documents import DocOptions, Renderer, process_document, unique_stems
from engines.factory import build_engine
from errors import InputError

SUFFIXES = {".pdf", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


def collect(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"not found: {item}")
    return files


async def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = build_engine(settings)
    await engine.start()
    if not engine.ready:
        print(f"engine not ready: {engine.error}", file=sys.stderr)
        return 2
    renderer = Renderer(settings.num_workers)
    files = collect(args.inputs)
    stems = unique_stems([f.name for f in files])
    out_root = Path(args.output)
    opts = DocOptions(args.prompt, args.mode, args.dpi, args.pages, args.password, args.layouts, not args.no_images)
    failures = 0
    try:
        with (
            tqdm(total=len(files), unit="file", desc="files") as files_bar,
            tqdm(unit="page", desc="pages") as pages_bar,
        ):
            for path, stem in zip(files, stems, strict=True):
                out = out_root / stem
                if (out / "result.json").exists():
                    files_bar.update(1)
                    continue
                seen = {"done": 0, "counted": False}

                def progress(done: int, total: int, seen=seen) -> None:
                    if not seen["counted"]:  # first call: this document's page count
                        pages_bar.total = (pages_bar.total or 0) + total
                        pages_bar.refresh()
                        seen["counted"] = True
                    pages_bar.update(done - seen["done"])
                    seen["done"] = done

                try:
                    await process_document(engine, settings, renderer, path.name, path, out, opts, progress)
                except InputError as e:
                    failures += 1
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "error.json").write_text(json.dumps({"filename": path.name, **e.body()}))
                    tqdm.write(f"{path}: {e.message}")
                files_bar.update(1)
    finally:
        renderer.shutdown()
        await engine.stop()
    print(f"{len(files) - failures} of {len(files)} file(s) done -> {out_root}")
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="files and/or folders")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    ap.add_argument("--prompt", default=None, help="catalogue name or prompt text (default: document)")
    ap.add_argument("--mode", default=None, help="tiny|small|base|large|gundam")
    ap.add_argument("--dpi", type=int, default=144)
    ap.add_argument("--pages", default=None, help="PDF page ranges like 1-3,7")
    ap.add_argument("--password", default=None)
    ap.add_argument("--layouts", action="store_true", help="write {name}_layouts.pdf")
    ap.add_argument("--no-images", action="store_true", help="do not write figure crops")
    sys.exit(asyncio.run(run(ap.parse_args())))


if __name__ == "__main__":
    main()
