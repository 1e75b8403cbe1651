"""A real S3 API for tests: moto in server mode (HTTP on 127.0.0.1), reached through boto3 like any S3 store."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3


def s3_env(endpoint: str) -> dict[str, str]:
    """The standard AWS settings that point the SDK (ours and the service's) at the local store."""
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


def start_moto(log: Path, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[subprocess.Popen, str]:
    """`python -m moto.server` on a free loopback port; returns (process, endpoint URL) once it accepts connections.
    Its request log (one line per HTTP request) goes to `log`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto server did not start; see {log}")


def client(endpoint: str, **credentials):
    env = s3_env(endpoint)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=credentials.get("key", env["AWS_ACCESS_KEY_ID"]),
        aws_secret_access_key=credentials.get("secret", env["AWS_SECRET_ACCESS_KEY"]),
    )


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", ())]
