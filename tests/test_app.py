"""App structure: router degradation, settings, engine selection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OCR_TEST_TEXT, ROOT, cer, make_client, wait_ready
from pydantic import ValidationError

from config import Settings
from engines.factory import choose_engine


def test_a_broken_router_leaves_the_others_serving(tmp_path, monkeypatch, scan_png):
    (tmp_path / "broken_pdf_routes.py").write_text("def oops(:\n    pass\n")  # a user's typo
    (tmp_path / "failing_batch_routes.py").write_text(
        "from fastapi import APIRouter\nrouter = APIRouter(prefix='/batch')\n"
        "def check(settings):\n    raise RuntimeError('batch storage is read-only')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    routers = {"ocr": "ocr_routes", "pdf": "broken_pdf_routes", "batch": "failing_batch_routes"}
    with make_client(routers=routers) as c:
        wait_ready(c)
        pdf = c.get("/pdf/status")
        assert pdf.status_code == 503 and "SyntaxError" in pdf.json()["error"]
        batch = c.get("/batch/status")
        assert batch.status_code == 503 and "read-only" in batch.json()["error"]
        r = c.post("/pdf/ocr", files={"file": ("a.pdf", b"%PDF-1.4")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "router_unavailable"
        root = c.get("/").json()["routers"]
        assert root["ocr"]["available"] and not root["pdf"]["available"] and not root["batch"]["available"]
        ok = c.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
        assert ok.status_code == 200 and cer(ok.json()["text"], OCR_TEST_TEXT) <= 0.1


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENCY", "7")
    monkeypatch.setenv("NGRAM_WHITELIST_TOKEN_IDS", "1, 2,3")
    monkeypatch.setenv("URL_ALLOW_NETWORKS", "10.0.0.0/8 192.168.1.0/24")
    monkeypatch.setenv("CROP_MODE", "false")
    s = Settings(_env_file=None)
    assert s.max_concurrency == 7 and s.ngram_whitelist_token_ids == [1, 2, 3]
    assert s.url_allow_networks == ["10.0.0.0/8", "192.168.1.0/24"] and s.crop_mode is False


@pytest.mark.parametrize(
    ("var", "value"),
    [("GPU_MEM_UTILIZATION", "1.5"), ("ENGINE", "tpu"), ("URL_ALLOW_NETWORKS", "not-a-net"), ("MAX_CONCURRENCY", "0")],
)
def test_bad_settings_fail_fast_naming_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as e:
        Settings(_env_file=None)
    assert var.lower() in str(e.value).lower()


def test_engine_auto_selection_explains_itself(monkeypatch):
    kind, why = choose_engine(Settings(_env_file=None, engine="auto"))
    assert kind == "cpu" and why  # no vllm/CUDA on this machine
    assert choose_engine(Settings(_env_file=None, engine="cpu")) == ("cpu", "ENGINE=cpu")


def test_engine_failure_keeps_health_up_and_ocr_503(monkeypatch, scan_png):
    import engines.cpu_engine as cpu

    def boom(self, n):
        raise RuntimeError("model file missing")

    monkeypatch.setattr(cpu.CPUEngine, "_load", boom)
    with make_client(Settings(_env_file=None, data_dir=Path("/tmp/ocr-test-data"))) as c:
        import time

        time.sleep(0.3)
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and "model file missing" in ready.json()["error"]
        assert c.get("/ping").status_code == 503
        r = c.post("/ocr/image/simple", files={"file": ("s.png", scan_png)})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        assert r.headers.get("retry-after")


# Run in a fresh interpreter where `import boto3` fails, as in an image without the AWS SDK: the app module
# imports, every router starts, and s3:// (enabled here) answers a clear 501 instead of the service not starting.
WITHOUT_BOTO3 = """
import sys
sys.modules["boto3"] = sys.modules["botocore"] = None  # importing either raises ImportError
from pathlib import Path
from fastapi.testclient import TestClient
import serve_ocr
from config import Settings
settings = Settings(_env_file=None, data_dir=Path(sys.argv[1]), s3_buckets=["ocr-in"], s3_output_buckets=["ocr-out"])
with TestClient(serve_ocr.create_app(settings)) as c:
    assert c.get("/health").status_code == 200
    routers = c.get("/").json()["routers"]
    assert all(r["available"] for r in routers.values()), routers
    for r in (
        c.post("/generate", json={"image_url": "s3://ocr-in/scan.png"}),
        c.post("/jobs", data={"input_uri": "s3://ocr-in/scans/"}),
        c.post("/jobs", data={"output_uri": "s3://ocr-out/res/"}, files={"files": ("a.png", b"x")}),
    ):
        err = r.json()["error"]
        assert r.status_code == 501 and err["code"] == "s3_sdk_missing", r.text
        assert "pip install boto3" in err["message"], err
assert sys.modules["boto3"] is None
print("served without boto3")
"""


def test_the_service_starts_without_boto3(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path / "default"), "ENGINE": "cpu"}  # serve_ocr's own app at import
    cmd = [sys.executable, "-c", WITHOUT_BOTO3, str(tmp_path / "data")]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "served without boto3" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert "boto3 is not installed" in r.stdout + r.stderr  # the startup warning: S3 is enabled without its SDK
