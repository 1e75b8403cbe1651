"""What one document's output folder (documents.py) becomes under an output prefix:

    {dest}/{stem}.md, {stem}_det.mmd, {stem}_layouts.pdf, images/*.jpg   as in the ZIP
    {dest}/pages/0001.json, pages/0001.md                                 each page: regions and Markdown
    {dest}/result.json                                                    the document's manifest entry, written last
result.json is written last, so its presence under {dest} means the document's results are complete.
"""

from __future__ import annotations

import json
from pathlib import Path

from storage.s3 import S3Uri, put, retrying

_SKIP = {"input.pdf", "layouts"}  # the PDF kept for a resume; page renders before they become the layouts PDF
CONTENT_TYPES = {
    ".md": "text/markdown; charset=utf-8",
    ".mmd": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".jpg": "image/jpeg",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
}


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def document_objects(folder: Path) -> list[tuple[str, bytes | Path]]:
    """(key under the destination, content) for each result of one document; result.json last."""
    out: list[tuple[str, bytes | Path]] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or rel.parts[0] in _SKIP or path.suffix in (".tmp", ".part"):
            continue
        out.append((rel.as_posix(), path))
        if rel.parts[0] == "pages" and path.suffix == ".json":
            markdown = json.loads(path.read_text()).get("markdown") or ""
            out.append((rel.with_suffix(".md").as_posix(), markdown.encode()))
    out.sort(key=lambda item: item[0] == "result.json")
    return out


def upload_document(folder: Path, dest: S3Uri, attempts: int, timeout_s: float = 20.0) -> int:
    """Every result of the folder under `dest`, each PUT retried on transient errors; returns the object count."""
    objects = document_objects(folder)
    for rel, data in objects:
        retrying(lambda rel=rel, data=data: put(dest.child(rel), data, content_type(rel), timeout_s), attempts)
    return len(objects)
