"""OCR a folder, images or PDFs into an output folder without running a server.

    python ocr_cli.py scans/ report.pdf -o out/ [--prompt document] [--dpi 144] [--layouts]
    python ocr_cli.py s3://bucket/scans/ -o s3://bucket/results/    # S3 (storage/cli_io.py)

Each input gets out/{name}/ with the same files as the service's ZIP ({name}.md, {name}_det.mmd,
{name}_layouts.pdf, images/) plus result.json. Resumable: a finished document (result.json present)
is skipped, and an interrupted PDF continues from its last finished page. Same pipeline and engine
selection (ENGINE, MODEL_PATH, ...) as the service. s3:// inputs (an object or a prefix) are fetched one at a
time; with an s3:// output, each document's results go to {prefix}{key below the input prefix}/ once it is done,
and a document whose result.json is already there is skipped. AWS settings are the SDK's standard ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from config import get_settings
from documents import DocOptions, Renderer, process_document, unique_stems
from engines.factory import build_engine
from errors import InputError
from storage import cli_io, s3

SUFFIXES = {".pdf", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


def collect(inputs: list[str], max_keys: int = 100_000) -> list[Path | cli_io.RemoteInput]:
    files: list[Path | cli_io.RemoteInput] = []
    for item in inputs:
        p = Path(item)
        if s3.is_s3(item):
            files += cli_io.expand(item, max_keys)
        elif p.is_dir():
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
    files = collect(args.inputs, settings.s3_max_keys)
    target = cli_io.Output(args.output, args.workdir, settings.s3_upload_attempts)
    stems = unique_stems([f.name for f in files])
    out_root = target.root
    opts = DocOptions(args.prompt, args.mode, args.dpi, args.pages, args.password, args.layouts, not args.no_images)
    failures = 0
    try:
        with (
            tqdm(total=len(files), unit="file", desc="files") as files_bar,
            tqdm(unit="page", desc="pages") as pages_bar,
        ):
            for path, stem in zip(files, stems, strict=True):
                out = out_root / stem
                rel = path.rel if isinstance(path, cli_io.RemoteInput) else stem  # under an s3:// output
                if ((out / "result.json").exists() and not target.s3) or target.done(rel):
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

                remote = isinstance(path, cli_io.RemoteInput)
                source = path.fetcher(out_root / ".inputs", settings.max_upload_bytes) if remote else path
                try:
                    await process_document(engine, settings, renderer, path.name, source, out, opts, progress)
                    await asyncio.to_thread(target.write, out, rel)
                except InputError as e:
                    failures += 1
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "error.json").write_text(json.dumps({"filename": path.name, **e.body()}))
                    tqdm.write(f"{path}: {e.message}")
                if remote:  # one input on disk at a time
                    shutil.rmtree(out_root / ".inputs", ignore_errors=True)
                files_bar.update(1)
    finally:
        renderer.shutdown()
        await engine.stop()
        target.close()
    print(f"{len(files) - failures} of {len(files)} file(s) done -> {args.output}")
    return 1 if failures else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="files, folders and/or s3:// objects or prefixes")
    ap.add_argument("-o", "--output", required=True, help="output folder or s3://bucket/prefix/")
    ap.add_argument("--workdir", default=None, help="with an s3:// output: local work folder (default: temporary)")
    ap.add_argument("--prompt", default=None, help="catalogue name or prompt text (default: document)")
    ap.add_argument("--mode", default=None, help="tiny|small|base|large|gundam")
    ap.add_argument("--dpi", type=int, default=144)
    ap.add_argument("--pages", default=None, help="PDF page ranges like 1-3,7")
    ap.add_argument("--password", default=None)
    ap.add_argument("--layouts", action="store_true", help="write {name}_layouts.pdf")
    ap.add_argument("--no-images", action="store_true", help="do not write figure crops")
    try:
        sys.exit(asyncio.run(run(ap.parse_args())))
    except InputError as e:  # an s3:// input or output that cannot be used
        raise SystemExit(f"error: {e.message}") from None


if __name__ == "__main__":
    main()
