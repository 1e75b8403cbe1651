"""Which buckets API callers may name. The service's credentials are not the caller's, so s3:// is off
until the operator lists buckets: S3_BUCKETS for inputs, S3_OUTPUT_BUCKETS for outputs ('*' = any;
shell-style patterns such as ocr-* work too). The CLI runs with its user's own credentials and skips this."""

from __future__ import annotations

from fnmatch import fnmatchcase

from config import Settings
from errors import InputError
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
