"""ocr_cli.py's S3 side: s3:// inputs (an object, or a prefix: every image and PDF under it) and an s3:// output
prefix mirroring the input keys, as jobs do (storage/job_io.py). The CLI runs with its user's own AWS credentials
(the standard chain and AWS_ENDPOINT_URL_S3), so the service's bucket allow-lists do not apply here.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ocr_utils import safe_name
from storage import s3
from storage.results import upload_document


@dataclass(frozen=True)
class RemoteInput:
    uri: s3.S3Uri
    rel: str  # the key below its prefix's folder: where its results go under an s3:// output

    def __str__(self) -> str:
        return str(self.uri)

    @property
    def name(self) -> str:
        return self.uri.key.rsplit("/", 1)[-1]

    def fetcher(self, folder: Path, limit: int) -> Callable[[], Awaitable[Path]]:
        """Downloads the object (size-capped) when its document's turn comes."""
        path = folder / safe_name(self.name)

        async def fetch() -> Path:
            if not path.exists():
                folder.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(s3.download, self.uri, path, limit)
            return path

        return fetch


def expand(item: str, max_keys: int) -> list[RemoteInput]:
    """s3://bucket/prefix -> one RemoteInput per image or PDF under it (paginated listing)."""
    prefix = s3.parse_uri(item, item)
    base = prefix.key.rpartition("/")[0] + "/" if "/" in prefix.key else ""
    found = [
        RemoteInput(s3.S3Uri(prefix.bucket, k["key"]), k["key"][len(base) :])
        for k in s3.list_documents(prefix, max_keys)
    ]
    if not found:
        raise SystemExit(f"no images or PDFs under {item}")
    return found


class Output:
    """Where results go: a local folder, or an s3:// prefix (documents are worked on in a local folder, then
    written under {prefix}{rel}/; one whose result.json is already there is skipped)."""

    def __init__(self, target: str, workdir: str | None, attempts: int = 4):
        self.s3 = s3.parse_uri(target, "--output") if s3.is_s3(target) else None
        self.temporary = self.s3 is not None and workdir is None
        self.root = Path(tempfile.mkdtemp(prefix="ocr_cli_")) if self.temporary else Path(workdir or target)
        self.attempts = attempts

    def done(self, rel: str) -> bool:
        return self.s3 is not None and s3.exists(self.s3.child(rel).child("result.json"))

    def write(self, folder: Path, rel: str) -> None:
        if self.s3 is not None:
            upload_document(folder, self.s3.child(rel), self.attempts)
            if self.temporary:  # written: a rerun checks the bucket, not this folder
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)
