"""ocr_cli.py with s3:// inputs and output against moto's S3 server: keys mirrored, a rerun skips what is done."""

from __future__ import annotations

import json

import moto_s3
from conftest import DOCLING, OCR_TEST_TEXT, cer
from test_cli_and_client import run_cli


def test_cli_s3_prefix_to_s3_output_is_resumable(s3_store):
    s3, _, log = s3_store
    for bucket in ("cli-in", "cli-out"):
        s3.create_bucket(Bucket=bucket)
    for key, name in (("scans/ocr_test.pdf", "ocr_test.pdf"), ("scans/sub/headings.pdf", "headings_and_text.pdf")):
        s3.put_object(Bucket="cli-in", Key=key, Body=(DOCLING / name).read_bytes())
    s3.put_object(Bucket="cli-in", Key="scans/corrupted.pdf", Body=(DOCLING / "corrupted.pdf").read_bytes())

    first = run_cli("s3://cli-in/scans/", "-o", "s3://cli-out/res/", "--dpi", "72")
    assert first.returncode == 1, first.stderr[-2000:]  # the corrupt one
    assert (
        "2 of 3" in first.stdout
        and "s3://cli-in/scans/corrupted.pdf: the file is not a PDF" in first.stdout + first.stderr
    )
    keys = set(moto_s3.keys(s3, "cli-out"))
    assert {"res/ocr_test.pdf/result.json", "res/sub/headings.pdf/result.json", "res/ocr_test.pdf/ocr_test.md"} <= keys
    assert not [k for k in keys if "corrupted" in k]
    entry = json.loads(s3.get_object(Bucket="cli-out", Key="res/ocr_test.pdf/result.json")["Body"].read())
    assert cer(entry["text"], OCR_TEST_TEXT) <= 0.15

    second = run_cli("s3://cli-in/scans/", "-o", "s3://cli-out/res/", "--dpi", "72")
    assert second.returncode == 1 and "2 of 3" in second.stdout
    requests = log.read_text()
    assert requests.count("GET /cli-in/scans/ocr_test.pdf ") == 1  # done: not fetched again
    assert requests.count("PUT /cli-out/res/ocr_test.pdf/result.json ") == 1  # nor written again
    assert requests.count("GET /cli-in/scans/corrupted.pdf ") == 2  # failed: tried again

    empty = run_cli("s3://cli-in/nothing-here/", "-o", "s3://cli-out/x/")
    assert empty.returncode != 0 and "no images or PDFs under s3://cli-in/nothing-here/" in empty.stderr
