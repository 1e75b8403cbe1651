"""S3 through boto3, configured the AWS SDK's own way: the credential chain (env, profile, instance or task
role), the region, and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for S3-compatible stores (MinIO, R2, Ceph).

boto3 is synchronous: these functions block, so async code calls them through asyncio.to_thread (see fetch).
It is imported at the first S3 call, not with this module: the service and the CLI start without the AWS SDK
when S3 is not used, and an S3 call without it answers 501 s3_sdk_missing (pip install boto3).
Every failure becomes an InputError with a fixed message that names the caller's own s3:// URI and the
store's error code only: botocore's messages can carry the service's identity (ARNs) or its endpoint.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from errors import InputError

DOCUMENT_SUFFIXES = (".pdf", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
_CHUNK = 1 << 20
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")  # S3's bucket naming rules (also MinIO's)
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, rel: str) -> S3Uri:
        """This URI as a folder, with `rel` under it."""
        base = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Uri(self.bucket, base + rel)


def is_s3(url: str | None) -> bool:
    return bool(url) and url.strip()[:5].lower() == "s3://"


def parse_uri(uri: str, field: str = "URI") -> S3Uri:
    """s3://bucket/key -> S3Uri; the key may be empty (the whole bucket) or a prefix."""
    uri = uri.strip()
    if not is_s3(uri):
        raise InputError(400, "bad_s3_uri", f"{field} must look like s3://bucket/key", accepted=["s3://bucket/key"])
    bucket, _, key = uri[5:].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InputError(
            400, "bad_s3_uri", f"{field}: {bucket[:70]!r} is not a valid bucket name (3-63 of a-z 0-9 . -)",
            accepted=["s3://bucket/key"],
        )  # fmt: skip
    if len(key.encode()) > 1024 or any(ord(c) < 32 for c in key):
        raise InputError(400, "bad_s3_uri", f"{field}: the key is over 1024 bytes or holds control characters")
    return S3Uri(bucket, key)


@cache
def _load_sdk() -> SimpleNamespace | None:
    """boto3 and the botocore names used here, imported once at the first S3 call; None without the SDK."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    except ImportError:
        return None
    return SimpleNamespace(
        boto3=boto3,
        Config=Config,
        ClientError=ClientError,
        NoCredentialsError=NoCredentialsError,
        errors=(ClientError, BotoCoreError),
    )


def sdk_installed() -> bool:
    return _load_sdk() is not None


def require_sdk() -> SimpleNamespace:
    """The SDK's names (see _load_sdk); without boto3, a 501 that says to install it."""
    sdk = _load_sdk()
    if sdk is None:
        raise InputError(
            501, "s3_sdk_missing", "s3:// needs the AWS SDK for Python, which is not installed here (pip install boto3)"
        )
    return sdk


def _errors() -> tuple[type[Exception], ...]:
    """What the calls below catch: botocore's errors (none without the SDK: client() has raised s3_sdk_missing)."""
    sdk = _load_sdk()
    return sdk.errors if sdk else ()


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def client(timeout_s: float = 20.0) -> Any:
    """A shared S3 client (thread-safe), rebuilt if the AWS_* environment changes (tests start a local store)."""
    sdk = require_sdk()
    key = (timeout_s, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
    with _clients_lock:
        c = _clients.get(key)
        if c is None:
            config = sdk.Config(
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"mode": "standard"},  # transient errors and throttling are retried by botocore
                max_pool_connections=32,
            )
            c = _clients[key] = sdk.boto3.session.Session().client("s3", config=config)
    return c


def error(e: Exception, uri: S3Uri, action: str) -> InputError:
    """A boto3/botocore exception as an InputError the caller can read (no identity, endpoint or path)."""
    sdk = require_sdk()  # loaded: e is one of its errors
    if isinstance(e, sdk.ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket":
            return InputError(404, "s3_bucket_not_found", f"bucket {uri.bucket!r} does not exist")
        if code in _NOT_FOUND:
            return InputError(404, "s3_not_found", f"{uri} does not exist")
        if code in _DENIED:
            return InputError(403, "s3_access_denied", f"the object store refused to {action} {uri} (access denied)")
        if code in _CREDENTIALS:
            return InputError(503, "s3_credentials", "the object store refused the service's credentials")
        if code in ("InvalidObjectState", "InvalidRange"):
            return InputError(422, "s3_object_unreadable", f"{uri} cannot be read now ({code}, e.g. archived)")
        return InputError(502, "s3_error", f"the object store answered {code or status} to {action} {uri}")
    if isinstance(e, sdk.NoCredentialsError):
        return InputError(503, "s3_credentials", "the service has no S3 credentials configured")
    return InputError(502, "s3_unavailable", f"the object store could not {action} {uri} ({type(e).__name__})")


def _stream(uri: S3Uri, limit: int, sink: Callable[[bytes], Any], timeout_s: float) -> int:
    """GET an object into `sink` chunk by chunk; refuses by its declared size before reading, and again
    while streaming if it grows past `limit`. Returns the byte count."""
    try:
        resp = client(timeout_s).get_object(Bucket=uri.bucket, Key=uri.key)
    except _errors() as e:
        raise error(e, uri, "read") from None
    body = resp["Body"]
    try:
        size = int(resp.get("ContentLength") or 0)
        if size > limit:  # closed unread: a 5 GB object costs one request, not 5 GB
            raise InputError(413, "file_too_large", f"{uri} is {size} bytes; the limit is {limit} (MAX_UPLOAD_BYTES)")
        total = 0
        for chunk in body.iter_chunks(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise InputError(413, "file_too_large", f"{uri} is over the limit of {limit} bytes (MAX_UPLOAD_BYTES)")
            sink(chunk)
    except _errors() as e:
        raise error(e, uri, "read") from None
    finally:
        body.close()
    if not total:
        raise InputError(400, "empty_file", f"{uri} is empty (0 bytes)")
    return total


def read(uri: S3Uri, limit: int, timeout_s: float = 20.0) -> bytes:
    chunks: list[bytes] = []
    _stream(uri, limit, chunks.append, timeout_s)
    return b"".join(chunks)


def download(uri: S3Uri, path: Path, limit: int, timeout_s: float = 20.0) -> Path:
    """The object into `path` (written to a temporary name first, so a kill never leaves half a file)."""
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            _stream(uri, limit, f.write, timeout_s)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def list_documents(prefix: S3Uri, max_keys: int, timeout_s: float = 20.0, page_size: int = 1000) -> Iterator[dict]:
    """Every image and PDF key under the prefix (in key order), page by page (ListObjectsV2 answers at most
    1000 keys at a time), as {"key", "size"}; refuses once more than `max_keys` match."""
    paginator = client(timeout_s).get_paginator("list_objects_v2")
    count = 0
    try:
        pages = paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key, PaginationConfig={"PageSize": page_size})
        for page in pages:
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if key.endswith("/") or not key.lower().endswith(DOCUMENT_SUFFIXES):
                    continue
                count += 1
                if count > max_keys:
                    raise InputError(
                        413, "too_many_files", f"{prefix} holds more than {max_keys} documents (S3_MAX_KEYS)"
                    )
                yield {"key": key, "size": int(obj.get("Size") or 0)}
    except _errors() as e:
        raise error(e, prefix, "list") from None


def exists(uri: S3Uri, timeout_s: float = 20.0) -> bool:
    try:
        client(timeout_s).head_object(Bucket=uri.bucket, Key=uri.key)
        return True
    except _errors() as e:
        if isinstance(e, require_sdk().ClientError) and str(e.response.get("Error", {}).get("Code")) in _NOT_FOUND:
            return False
        raise error(e, uri, "read") from None


def put(uri: S3Uri, data: bytes | Path, content_type: str, timeout_s: float = 20.0) -> None:
    """Write one object with a single PUT (results are far below S3's 5 GB single-PUT limit)."""
    try:
        if isinstance(data, Path):
            with open(data, "rb") as f:
                client(timeout_s).put_object(Bucket=uri.bucket, Key=uri.key, Body=f, ContentType=content_type)
        else:
            client(timeout_s).put_object(Bucket=uri.bucket, Key=uri.key, Body=data, ContentType=content_type)
    except _errors() as e:
        raise error(e, uri, "write") from None


def retrying(fn: Callable[[], Any], attempts: int, pause_s: float = 1.0) -> Any:
    """fn(), again after a pause (doubling) while it fails with a transient error (5xx), at most `attempts` times.
    A refusal (4xx: missing bucket, access denied) is final at once."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except InputError as e:
            if e.status < 500 or attempt == attempts:
                raise
        time.sleep(pause_s * 2 ** (attempt - 1))
