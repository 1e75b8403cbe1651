"""Which buckets API callers may name. The service's credentials are not the caller's, so s3:// is off
until the operator lists buckets: S3_BUCKETS for inputs, S3_OUTPUT_BUCKETS for outputs ('*' = any;
shell-style patterns such as ocr-* work too). The CLI runs with its user's own credentials and skips this."""

from __future__ import annotations

import asyncio
from fnmatch import fnmatchcase

from config import Settings
from errors import InputError
from storage import s3
from storage.s3 import S3Uri


def allowed(bucket: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(bucket, p) for p in patterns)


def check_read(uri: S3Uri, settings: Settings) -> None:
    if not settings.s3_buckets:
        raise InputError(
            400, "s3_disabled", "s3:// inputs are off on this service (the operator enables them with S3_BUCKETS)",
            accepted=["http", "https"],
        )  # fmt: skip
    if not allowed(uri.bucket, settings.s3_buckets):
        raise InputError(403, "s3_bucket_not_allowed", f"bucket {uri.bucket!r} may not be read (S3_BUCKETS)")


def check_write(uri: S3Uri, settings: Settings) -> None:
    if not settings.s3_output_buckets:
        raise InputError(
            400, "s3_output_disabled", "s3:// outputs are off on this service (the operator enables them with "
            "S3_OUTPUT_BUCKETS)",
        )  # fmt: skip
    if not allowed(uri.bucket, settings.s3_output_buckets):
        raise InputError(403, "s3_bucket_not_allowed", f"bucket {uri.bucket!r} may not be written (S3_OUTPUT_BUCKETS)")


async def fetch(url: str, settings: Settings, limit: int) -> bytes:
    """An s3:// image_url / pdf_url from an API caller: checked against S3_BUCKETS, then read in a worker
    thread with the size cap."""
    uri = s3.parse_uri(url, "the URL")
    check_read(uri, settings)
    if not uri.key or uri.key.endswith("/"):
        raise InputError(400, "bad_s3_uri", f"{uri} names a folder, not an object (prefixes are for POST /jobs)")
    return await asyncio.to_thread(s3.read, uri, limit, settings.url_timeout_s)
