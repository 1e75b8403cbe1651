"""Getting request bytes safely: uploads with a size cap, base64 fields, and URLs fetched without SSRF.

URL rules: http(s) only; every address the host resolves to must be public (or inside URL_ALLOW_NETWORKS,
or ALLOW_PRIVATE_URLS=true); the connection goes to the address that was checked (no DNS rebinding);
redirects are followed by hand and each hop is checked again; size and time are capped while streaming.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from fastapi import UploadFile

from config import Settings
from errors import InputError

_CHUNK = 1 << 20


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes, refusing (413) as soon as more than `limit` bytes have arrived."""
    chunks, total = [], 0
    while chunk := await upload.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise InputError(413, "file_too_large", f"upload is over the limit of {limit} bytes (MAX_UPLOAD_BYTES)")
        chunks.append(chunk)
    if not total:
        raise InputError(400, "empty_file", f"the uploaded file {upload.filename or ''!r} is empty (0 bytes)")
    return b"".join(chunks)


def decode_base64(value: str, limit: int, field: str = "image_base64") -> bytes:
    """Base64 (optionally a data: URL) -> bytes, with a size cap checked before decoding."""
    value = value.strip()
    if value.startswith("data:"):
        value = value.partition(",")[2]
    value = "".join(value.split())
    if len(value) * 3 // 4 > limit:
        raise InputError(413, "file_too_large", f"{field} decodes to more than {limit} bytes (MAX_UPLOAD_BYTES)")
    try:
        data = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(400, "bad_base64", f"{field} is not valid base64: {e}") from e
    if not data:
        raise InputError(400, "empty_file", f"{field} is empty")
    return data


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, settings: Settings) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if any(ip in ipaddress.ip_network(n, strict=False) for n in settings.url_allow_networks):
        return True
    if settings.allow_private_urls:
        return not (ip.is_multicast or ip.is_unspecified)
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


async def resolve_checked(host: str, port: int, settings: Settings) -> str:
    """One address of `host` that policy allows; refuses if ANY resolved address is not allowed."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError(400, "url_unresolvable", f"cannot resolve host {host!r}: {e.strerror}") from e
    addrs = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    bad = [str(a) for a in addrs if not address_allowed(a, settings)]
    if bad or not addrs:
        raise InputError(
            400,
            "url_not_allowed",
            f"host {host!r} resolves to a private, loopback or reserved address ({', '.join(bad)}); "
            "set ALLOW_PRIVATE_URLS=true or URL_ALLOW_NETWORKS to allow it",
        )
    return str(addrs[0])


def _check_url(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InputError(
            400, "bad_url_scheme", f"URL scheme {parts.scheme!r} is not accepted", accepted=["http", "https"]
        )
    if not parts.hostname:
        raise InputError(400, "bad_url", f"URL {url!r} has no host")
    if parts.username or parts.password:
        raise InputError(400, "bad_url", "URLs with credentials are not accepted")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


async def pinned(url: str, settings: Settings) -> tuple[str, dict[str, str], str]:
    """Check a URL under the rules above and pin it to the checked address: (pinned URL, headers, host for SNI).
    Used for every outgoing request: URL inputs and job callbacks."""
    scheme, host, port = _check_url(url)
    ip = await resolve_checked(host, port, settings)
    parts = urlsplit(url)
    netloc = f"[{ip}]" if ":" in ip else ip
    target = urlunsplit((scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
    return target, {"Host": parts.netloc.rpartition("@")[2], "User-Agent": "deepseek-ocr-service"}, host


async def fetch_url(url: str, settings: Settings, limit: int) -> bytes:
    """GET a URL under the rules above; returns the body bytes. s3://bucket/key is read from object storage
    (storage/policy.py: the S3_BUCKETS allow-list, the same size cap)."""
    if url.strip()[:5].lower() == "s3://":
        from storage import policy  # boto3 is imported only when an s3:// URL arrives

        return await policy.fetch(url, settings, limit)
    timeout = httpx.Timeout(settings.url_timeout_s)
    try:
        async with asyncio.timeout(settings.url_timeout_s * 2):
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
                for _ in range(settings.url_max_redirects + 1):
                    target, headers, host = await pinned(url, settings)
                    req = client.build_request("GET", target, headers=headers, extensions={"sni_hostname": host})
                    resp = await client.send(req, stream=True)
                    try:
                        if resp.is_redirect:
                            loc = resp.headers.get("location")
                            if not loc:
                                raise InputError(400, "url_fetch_failed", f"redirect from {url} has no Location")
                            url = urljoin(url, loc)
                            continue
                        if resp.status_code >= 400:
                            raise InputError(400, "url_fetch_failed", f"GET {url} answered HTTP {resp.status_code}")
                        declared = int(resp.headers.get("content-length") or 0)
                        if declared > limit:
                            raise InputError(413, "file_too_large", f"{url} is {declared} bytes; the limit is {limit}")
                        chunks, total = [], 0
                        async for chunk in resp.aiter_bytes(_CHUNK):
                            total += len(chunk)
                            if total > limit:
                                raise InputError(413, "file_too_large", f"{url} is over the limit of {limit} bytes")
                            chunks.append(chunk)
                        return b"".join(chunks)
                    finally:
                        await resp.aclose()
                raise InputError(400, "too_many_redirects", f"more than {settings.url_max_redirects} redirects")
    except TimeoutError as e:
        raise InputError(
            408, "url_timeout", f"fetching {url} took longer than {settings.url_timeout_s * 2:.0f} s"
        ) from e
    except httpx.HTTPError as e:
        raise InputError(400, "url_fetch_failed", f"could not fetch {url}: {type(e).__name__}: {e}") from e
