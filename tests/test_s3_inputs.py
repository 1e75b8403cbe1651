"""s3:// image_url / pdf_url through every kind of route, against moto's S3 server over HTTP (boto3, the standard
AWS_ENDPOINT_URL_S3 variable): reads, the bucket allow-list, and each refusal as a clear 4xx without leaks."""

from __future__ import annotations

from pathlib import Path

import moto_s3
import pytest
from conftest import DOCLING, OCR_TEST_TEXT, cer, make_client, page_text, render, wait_ready
from service import stop_service

from config import Settings
from errors import InputError

SCAN = render("ocr_test.pdf")


@pytest.fixture(scope="module")
def store(s3_store):
    s3, endpoint, _ = s3_store
    s3.create_bucket(Bucket="ocr-in")
    s3.create_bucket(Bucket="private-docs")
    s3.put_object(Bucket="ocr-in", Key="scans/ocr test.png", Body=SCAN)
    s3.put_object(Bucket="ocr-in", Key="pdfs/generated.pdf", Body=(DOCLING / "multi_page_generated.pdf").read_bytes())
    s3.put_object(Bucket="ocr-in", Key="notes.txt", Body=b"just some text, not a document\n")
    s3.put_object(Bucket="ocr-in", Key="big.png", Body=b"\0" * 300_000)
    s3.put_object(Bucket="private-docs", Key="scan.png", Body=SCAN)
    return s3, endpoint


@pytest.fixture(scope="module")
def s3_client(store):
    """S3_BUCKETS lists ocr-in (and a pattern for buckets that do not exist); private-docs is not listed."""
    s = Settings(
        _env_file=None,
        s3_buckets=["ocr-in", "missing-*"],
        max_upload_bytes=250_000,
        data_dir=Path("/tmp/ocr-test-data"),
    )
    with make_client(s) as c:
        wait_ready(c)
        yield c


def error_of(r) -> dict:
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    for leak in ("127.0.0.1", "testing", "arn:", "/tmp"):  # endpoint, credentials, identity, local paths
        assert leak not in err["message"], err
    return err


def test_image_from_a_bucket_on_every_image_route(s3_client):
    url = "s3://ocr-in/scans/ocr test.png"
    r = s3_client.post("/ocr/image/simple", data={"image_url": url})
    assert r.status_code == 200, r.text
    assert cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1
    r = s3_client.post("/generate", json={"image_url": url, "prompt": "free"})
    assert r.status_code == 200 and cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1
    r = s3_client.post("/invocations", json={"image_url": url})  # SageMaker seed 002
    assert r.status_code == 200 and cer(r.json()["text"], OCR_TEST_TEXT) <= 0.1


def test_pdf_from_a_bucket(s3_client):
    r = s3_client.post("/invocations", json={"pdf_url": "s3://ocr-in/pdfs/generated.pdf"})
    assert r.status_code == 200, r.text
    assert r.json()["pages"] == 3
    expected = "\n\n".join(page_text("multi_page_generated.pdf", i) for i in range(3))
    assert cer(r.json()["text"], expected) <= 0.15
    r = s3_client.post("/pdf/ocr", data={"pdf_url": "s3://ocr-in/pdfs/generated.pdf", "pages": "2"})
    assert r.status_code == 200 and r.json()["filename"] == "generated.pdf" and r.json()["pages_processed"] == 1


@pytest.mark.parametrize(
    ("route", "body", "status", "code"),
    [
        ("/generate", {"image_url": "s3://private-docs/scan.png"}, 403, "s3_bucket_not_allowed"),
        ("/generate", {"image_url": "s3://ocr-in/scans/nope.png"}, 404, "s3_not_found"),
        ("/invocations", {"pdf_url": "s3://ocr-in/pdfs/missing.pdf"}, 404, "s3_not_found"),
        ("/generate", {"image_url": "s3://missing-bucket/a.png"}, 404, "s3_bucket_not_found"),
        ("/generate", {"image_url": "s3://ocr-in/big.png"}, 413, "file_too_large"),  # refused by its size
        ("/generate", {"image_url": "s3://ocr-in/pdfs/generated.pdf"}, 415, "pdf_sent_as_image"),  # wrong type
        ("/generate", {"image_url": "s3://ocr-in/notes.txt"}, 415, "not_an_image"),
        ("/invocations", {"pdf_url": "s3://ocr-in/notes.txt"}, 415, "not_a_pdf"),
        ("/generate", {"image_url": "s3://ocr-in/scans/"}, 400, "bad_s3_uri"),  # a folder
        ("/generate", {"image_url": "s3://Bad_Bucket!/a.png"}, 400, "bad_s3_uri"),
    ],
)
def test_refusals_are_clear_4xx(s3_client, route, body, status, code):
    r = s3_client.post(route, json=body)
    assert r.status_code == status, r.text
    assert error_of(r)["code"] == code


def test_s3_is_off_until_buckets_are_listed(client, store):
    err = error_of(client.post("/generate", json={"image_url": "s3://ocr-in/scans/ocr test.png"}))
    assert err["code"] == "s3_disabled" and "S3_BUCKETS" in err["message"]


def test_denied_read_is_403(tmp_path, store):
    """A store that enforces IAM (moto with INITIAL_NO_AUTH_ACTION_COUNT): the service's user has no policy."""
    import os

    proc, endpoint = moto_s3.start_moto(tmp_path / "auth.log", {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"})
    try:
        import boto3

        admin = moto_s3.client(endpoint)
        admin.create_bucket(Bucket="locked")
        admin.put_object(Bucket="locked", Key="scan.png", Body=SCAN)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="ocr-service")
        key = iam.create_access_key(UserName="ocr-service")["AccessKey"]  # the 4th unauthenticated action
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
            mp.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
            mp.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
            s = Settings(_env_file=None, s3_buckets=["*"], data_dir=tmp_path)
            with make_client(s) as c:
                wait_ready(c)
                r = c.post("/generate", json={"image_url": "s3://locked/scan.png"})
        assert r.status_code == 403, r.text
        err = error_of(r)
        assert err["code"] == "s3_access_denied" and key["AccessKeyId"] not in err["message"]
    finally:
        stop_service(proc, grace=10)


def test_prefix_listing_follows_continuation_pages(store, s3_store):
    """The listing behind input_uri: every document key over many ListObjectsV2 pages, non-documents left out."""
    from storage import s3 as storage_s3

    s3, _, log = s3_store
    for i in range(25):
        s3.put_object(Bucket="ocr-in", Key=f"many/{i:03d}.{('png', 'pdf', 'jpg')[i % 3]}", Body=b"x")
    for name in ("many/readme.txt", "many/sub/", "many/data.json"):
        s3.put_object(Bucket="ocr-in", Key=name, Body=b"x")
    before = log.read_text().count("GET /ocr-in?list-type=2")
    found = list(storage_s3.list_documents(storage_s3.S3Uri("ocr-in", "many/"), 100, page_size=4))
    assert [f["key"] for f in found] == [f"many/{i:03d}.{('png', 'pdf', 'jpg')[i % 3]}" for i in range(25)]
    assert log.read_text().count("GET /ocr-in?list-type=2") - before == 7  # 28 keys, 4 a page
    with pytest.raises(InputError) as e:
        list(storage_s3.list_documents(storage_s3.S3Uri("ocr-in", "many/"), 10, page_size=4))
    assert e.value.status == 413 and e.value.code == "too_many_files"


def test_openai_image_url_takes_s3(s3_client):
    """/v1/chat/completions image_url parts go through the same fetch: s3:// works, with the same allow-list."""

    def chat(url: str):
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]
        return s3_client.post(
            "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": content}]}
        )

    r = chat("s3://ocr-in/scans/ocr test.png")
    assert r.status_code == 200, r.text
    assert cer(r.json()["choices"][0]["message"]["content"], OCR_TEST_TEXT) <= 0.1
    r = chat("s3://private-docs/scan.png")
    assert r.status_code == 403 and r.json()["error"]["code"] == "s3_bucket_not_allowed"
