"""Jobs with S3: output_uri (results written under a prefix, failures reported), input_uri (a whole prefix as one
job, resumed after kill -9), all against moto's S3 server over HTTP."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import time
import zipfile
from pathlib import Path

import httpx
import moto_s3
import pymupdf
import pytest
from conftest import DOCLING, OCR_TEST_TEXT, cer, make_client, render, wait_ready
from PIL import Image
from service import start_service
from test_jobs import wait_state

from config import Settings

SCAN = render("ocr_test.pdf")


@pytest.fixture(scope="module")
def store(s3_store):
    s3, _, log = s3_store
    for bucket in ("jobs-in", "jobs-out", "other-out"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="jobs-in", Key="empty-folder/readme.txt", Body=b"no documents here")
    return s3, log


@pytest.fixture()
def s3_job_client(store, tmp_path):
    s = Settings(_env_file=None, data_dir=tmp_path, s3_buckets=["jobs-in"], s3_output_buckets=["jobs-out", "gone-*"])
    with make_client(s) as c:
        wait_ready(c)
        yield c


def test_uploaded_file_results_written_under_output_uri(store, s3_job_client):
    s3, _ = store
    r = s3_job_client.post("/jobs", files=[("files", ("scan.png", SCAN))], data={"output_uri": "s3://jobs-out/single"})
    assert r.status_code == 202, r.text
    assert r.json()["output"] == {"uri": "s3://jobs-out/single/", "state": "pending"}
    job = wait_state(s3_job_client, r.json()["job_id"])
    assert job["state"] == "done" and job["error"] is None
    assert job["output"]["state"] == "written" and job["output"]["documents_written"] == 1
    assert job["files"][0]["output"] == "s3://jobs-out/single/scan/"
    keys = set(moto_s3.keys(s3, "jobs-out", "single/"))
    expected = {"scan.md", "scan_det.mmd", "pages/0001.json", "pages/0001.md", "result.json"}
    assert {f"single/scan/{k}" for k in expected} <= keys
    assert {"single/manifest.json", "single/results.zip"} <= keys
    md = s3.get_object(Bucket="jobs-out", Key="single/scan/scan.md")["Body"].read().decode()
    assert cer(md, OCR_TEST_TEXT) <= 0.15
    assert s3.get_object(Bucket="jobs-out", Key="single/scan/pages/0001.md")["Body"].read().decode() == md
    manifest = json.loads(s3.get_object(Bucket="jobs-out", Key="single/manifest.json")["Body"].read())
    assert manifest["summary"] == {"total": 1, "succeeded": 1, "failed": 0, "written": 1}
    zipped = s3.get_object(Bucket="jobs-out", Key="single/results.zip")["Body"].read()
    assert "scan/scan.md" in zipfile.ZipFile(io.BytesIO(zipped)).namelist()


def test_failed_upload_is_reported_and_local_results_stay(s3_job_client):
    r = s3_job_client.post("/jobs", files=[("files", ("scan.png", SCAN))], data={"output_uri": "s3://gone-bucket/x/"})
    job = wait_state(s3_job_client, r.json()["job_id"])
    assert job["state"] == "done"
    assert job["output"]["state"] == "failed" and job["output"]["documents_written"] == 0
    assert "'gone-bucket' does not exist" in job["output"]["error"] and job["error"] == job["output"]["error"]
    assert "does not exist" in job["files"][0]["output_error"] and "output" not in job["files"][0]
    events = s3_job_client.app.state.jobs.store.events(job["job_id"])
    assert [e["type"] for _, e in events][-2:] == ["output", "done"]
    assert s3_job_client.get(f"/jobs/{job['job_id']}/download").status_code == 200
    assert cer(s3_job_client.get(f"/jobs/{job['job_id']}/result").json()["files"][0]["text"], OCR_TEST_TEXT) <= 0.15


@pytest.mark.parametrize(
    ("data", "files", "status", "code"),
    [
        ({"output_uri": "s3://other-out/x/"}, True, 403, "s3_bucket_not_allowed"),
        ({"input_uri": "s3://jobs-out/"}, False, 403, "s3_bucket_not_allowed"),
        ({"input_uri": "s3://jobs-in/batch/"}, True, 400, "need_one_input"),
        ({"input_uri": "s3://jobs-in/empty-folder/"}, False, 404, "no_documents"),
        ({"input_uri": "http://example.com/a/"}, False, 400, "bad_s3_uri"),
        ({"output_uri": "s3://jobs-out/x/"}, False, 400, "no_files"),
    ],
)
def test_job_uri_refusals(s3_job_client, data, files, status, code):
    r = s3_job_client.post("/jobs", data=data, files=[("files", ("scan.png", SCAN))] if files else None)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_s3_job_inputs_off_by_default(tmp_path):
    with make_client(Settings(_env_file=None, data_dir=tmp_path)) as c:
        wait_ready(c)
        r = c.post("/jobs", data={"input_uri": "s3://jobs-in/batch/"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "s3_disabled"
        r = c.post("/jobs", files=[("files", ("scan.png", SCAN))], data={"output_uri": "s3://jobs-out/x/"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "s3_output_disabled"


def top_of(path: Path, page: int, fmt: str, fraction: float = 0.3) -> bytes:
    """The top of a page, rendered at 72 dpi: a small page with a few lines (the CPU engine's time follows lines)."""
    doc = pymupdf.open(path)
    rect = doc[page].rect
    clip = pymupdf.Rect(0, 0, rect.width, rect.height * fraction)
    return doc[page].get_pixmap(dpi=72, clip=clip).tobytes(fmt)


def image_top(path: Path, fmt: str, fraction: float = 0.3) -> bytes:
    with Image.open(path) as im:
        part = im.convert("RGB").crop((0, 0, im.width, int(im.height * fraction)))
        out = io.BytesIO()
        part.save(out, fmt)
        return out.getvalue()


def corpus() -> dict[str, bytes]:
    """25 small single-page documents made from ../shared/testdata (PDFs, pages split from PDFs, tops of pages
    rendered as JPEG/PNG, images) and one corrupt PDF; keys relative to the input prefix, some in sub-folders."""
    docs: dict[str, bytes] = {}
    for name in ("empty_page.pdf", "headings_and_text.pdf", "ocr_test.pdf", "single_page.pdf"):
        docs[name] = (DOCLING / name).read_bytes()
    for name, pages in (("multi_page_generated.pdf", (0, 1, 2)), ("multi_page.pdf", (4,))):
        src = pymupdf.open(DOCLING / name)
        for i in pages:
            one = pymupdf.open()
            one.insert_pdf(src, from_page=i, to_page=i)
            docs[f"split/{Path(name).stem}_p{i + 1}.pdf"] = one.tobytes()
    renders = [("normal_4pages.pdf", i) for i in range(4)] + [("multi_page.pdf", i) for i in range(4)]
    renders += [("code_and_formula.pdf", 0), ("picture_classification.pdf", 0), ("2305.03393v1-pg9.pdf", 0)]
    renders += [("right_to_left_01.pdf", 0)]
    for k, (name, i) in enumerate(renders):
        fmt = ("png", "jpeg")[k % 2]
        docs[f"renders/{Path(name).stem}_p{i + 1}.{fmt.replace('jpeg', 'jpg')}"] = top_of(DOCLING / name, i, fmt)
    docs["images/webp-test.webp"] = image_top(DOCLING / "webp-test.webp", "webp", 0.2)
    docs["images/example_image_01.png"] = image_top(DOCLING / "example_image_01.png", "png")
    docs["images/qr_bill_example.jpg"] = image_top(DOCLING / "qr_bill_example.jpg", "jpeg", 0.25)
    docs["images/2206.01062.tif"] = image_top(DOCLING / "2206.01062.tif", "tiff", 0.25)
    docs["corrupted.pdf"] = (DOCLING / "corrupted.pdf").read_bytes()
    assert len(docs) == 25
    return docs


def test_prefix_job_survives_kill_9_and_restart(store, tmp_path):
    """input_uri=s3://jobs-in/batch/ (25 documents, one corrupt) -> output_uri; the server is killed midway and
    restarted: every good document's results end up under the output prefix exactly once, documents finished
    before the kill are neither fetched nor OCR'd again, and the corrupt one is reported."""
    s3, moto_log = store
    docs = corpus()
    for rel, data in docs.items():
        s3.put_object(Bucket="jobs-in", Key=f"batch/{rel}", Body=data)
    s3.put_object(Bucket="jobs-in", Key="batch/notes.txt", Body=b"not a document: not listed")
    env = {"DATA_DIR": str(tmp_path), "ENGINE": "cpu", "NUM_WORKERS": "1", "S3_BUCKETS": "jobs-in"}
    env["S3_OUTPUT_BUCKETS"] = "jobs-out"
    t0 = time.time()
    proc, base = start_service(env)
    try:
        form = {"input_uri": "s3://jobs-in/batch/", "output_uri": "s3://jobs-out/mirror/", "dpi": "72"}
        r = httpx.post(f"{base}/jobs", data={**form, "draw_layouts": "true"}, timeout=60)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert sorted(f["name"] for f in r.json()["files"]) == sorted(f"batch/{k}" for k in docs)
        assert all(f["source"] == f"s3://jobs-in/{f['name']}" for f in r.json()["files"])
        deadline = time.time() + 300
        while time.time() < deadline:  # kill once a third of the documents are done
            job = httpx.get(f"{base}/jobs/{job_id}").json()
            if job["progress"]["files_done"] >= 8:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        done_before = {f["name"] for f in job["files"] if f["state"] == "done"}
        assert 8 <= len(done_before) < 24, job["progress"]
        gets_before = moto_log.read_text().count("GET /jobs-in/batch/")
        proc, _ = start_service(env, base=base)
        deadline = time.time() + 300
        while time.time() < deadline:
            job = httpx.get(f"{base}/jobs/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(0.3)
        seconds = time.time() - t0
        assert job["state"] == "done", job
        assert job["output"]["state"] == "written" and job["error"] is None, job["output"]
        assert job["output"]["documents_written"] == 24
        by_name = {f["name"]: f for f in job["files"]}
        bad = by_name.pop("batch/corrupted.pdf")
        assert bad["state"] == "failed" and bad["error"]["code"] and "output" not in bad
        for name, f in by_name.items():
            assert f["state"] == "done" and f["output"] == f"s3://jobs-out/mirror/{name.removeprefix('batch/')}/"
        assert httpx.get(f"{base}/jobs/{job_id}/download").status_code == 200  # local results as before
    finally:
        proc.kill()
        proc.wait(10)
    print(f"\n25-document prefix job with a kill -9 and restart: {seconds:.1f} s")

    # Exactly once: one folder of results per good key, mirroring the input keys; nothing for the corrupt one.
    keys = moto_s3.keys(s3, "jobs-out", "mirror/")
    results = sorted(k.removeprefix("mirror/").removesuffix("/result.json") for k in keys if k.endswith("/result.json"))
    assert results == sorted(k for k in docs if k != "corrupted.pdf")
    assert not [k for k in keys if k.startswith("mirror/corrupted.pdf")]
    for rel in results:
        entry = json.loads(s3.get_object(Bucket="jobs-out", Key=f"mirror/{rel}/result.json")["Body"].read())
        assert entry["filename"] == f"batch/{rel}" and entry["success"]
        stem = entry["stem"]
        assert {f"mirror/{rel}/{stem}.md", f"mirror/{rel}/pages/0001.md", f"mirror/{rel}/pages/0001.json"} <= set(keys)
    scan = json.loads(s3.get_object(Bucket="jobs-out", Key="mirror/ocr_test.pdf/result.json")["Body"].read())
    assert cer(scan["text"], OCR_TEST_TEXT) <= 0.15
    manifest = json.loads(s3.get_object(Bucket="jobs-out", Key="mirror/manifest.json")["Body"].read())
    assert manifest["summary"] == {"total": 25, "succeeded": 24, "failed": 1, "written": 24}
    (corrupt,) = [d for d in manifest["documents"] if not d["success"]]
    assert corrupt["name"] == "batch/corrupted.pdf" and corrupt["error"]["code"] == bad["error"]["code"]
    assert "mirror/results.zip" in keys

    # Documents finished before the kill: fetched once in all, and no page of theirs was OCR'd after the restart.
    log = moto_log.read_text()
    for name in done_before:
        assert log.count(f"GET /jobs-in/{name} ") == 1, name
    assert log.count("GET /jobs-in/batch/") - gets_before <= 25 - len(done_before) + 1
    db = sqlite3.connect(tmp_path / "jobs.db")
    events = [
        json.loads(d) for (d,) in db.execute("SELECT data FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))
    ]
    restart = max(i for i, e in enumerate(events) if e["type"] == "state" and e["state"] == "running")
    assert events[restart]["attempt"] == 2
    redone = {e["name"] for e in events[restart:] if e["type"] == "page"} & done_before
    assert not redone
    pages = [(e["name"], e["page"]) for e in events if e["type"] == "page"]
    assert set(pages) == {(f"batch/{k}", 1) for k in docs if k != "corrupted.pdf"}
