"""Interactive test client for a running service (the menu of seed 001). Not the test suite: that is tests/.

    python test_ocr.py                              # menu
    python test_ocr.py --item 1                     # quick test, no questions asked
    python test_ocr.py --item 5 --file report.pdf   # PDF OCR, full
    python test_ocr.py --item 9 --dir samples/      # everything
Options: --url (default http://localhost:8000), --file, --dir, --prompt, --out (where results are saved).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
PROMPTS = ["document", "ocr", "free", "markdown", "figure", "describe"]


class Client:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.http = httpx.Client(base_url=args.url, timeout=args.timeout)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)

    # --- helpers -----------------------------------------------------------------------
    def ask(self, question: str, default: str | None = None) -> str:
        if not sys.stdin.isatty():
            if default is None:
                raise SystemExit(f"{question}: give it as a flag (see --help)")
            return default
        answer = input(f"{question}{f' [{default}]' if default else ''}: ").strip()
        return answer or (default or "")

    def image(self) -> Path:
        if self.args.file and Path(self.args.file).suffix.lower() in IMAGE_SUFFIXES:
            return Path(self.args.file)
        found = self.images()
        return Path(self.ask("image file", str(found[0]) if found else None))

    def pdf(self) -> Path:
        if self.args.file and self.args.file.lower().endswith(".pdf"):
            return Path(self.args.file)
        found = sorted(Path(self.args.dir).glob("*.pdf"))
        return Path(self.ask("PDF file", str(found[0]) if found else None))

    def images(self) -> list[Path]:
        return sorted(p for p in Path(self.args.dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def show(self, title: str, r: httpx.Response, keys: tuple[str, ...] = ()) -> dict | None:
        ok = r.is_success
        print(f"\n== {title}: HTTP {r.status_code} {'OK' if ok else 'FAILED'}")
        if not ok:
            print(r.text[:500])
            return None
        if "json" not in r.headers.get("content-type", ""):
            return None
        body = r.json()
        for k in keys:
            v = body.get(k)
            print(f"{k}: {v[:600] + '...' if isinstance(v, str) and len(v) > 600 else v}")
        return body

    def save(self, name: str, data: bytes | str) -> Path:
        path = self.out / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        print(f"saved {path}")
        return path

    # --- the menu ----------------------------------------------------------------------
    def quick(self) -> bool:
        ok = self.show("health", self.http.get("/health"), ("status",)) is not None
        root = self.show("service", self.http.get("/"), ("engine", "routers"))
        for router in ("ocr", "pdf", "batch"):
            self.show(f"/{router}/status", self.http.get(f"/{router}/status"), ("available",))
        img = self.image()
        r = self.http.post("/generate_with_file", files={"file": img.open("rb")}, data={"prompt": "free"})
        return ok and root is not None and self.show("single inference", r, ("result",)) is not None

    def upload(self) -> bool:
        img = self.image()
        prompt = self.args.prompt or self.ask("prompt", "document")
        data = {"prompt": prompt, "draw_boxes": "true", "crop_regions": "true"}
        body = self.show(
            "advanced image OCR",
            self.http.post("/ocr/image/advanced", files={"file": img.open("rb")}, data=data),
            ("markdown",),
        )
        if body and body.get("annotated_image"):
            self.save(f"{img.stem}_annotated.png", base64.b64decode(body["annotated_image"]))
        return body is not None

    def directory(self) -> bool:
        ok = True
        for img in self.images():
            r = self.http.post("/ocr/image/simple", files={"file": img.open("rb")})
            ok &= self.show(img.name, r, ("text",)) is not None
        return ok

    def prompts(self) -> bool:
        img = self.image()
        ok = True
        for prompt in PROMPTS:
            r = self.http.post(
                "/ocr/image/advanced", files={"file": img.open("rb")}, data={"prompt": prompt, "draw_boxes": "false"}
            )
            body = self.show(f"prompt {prompt!r}", r, ("text",))
            ok &= body is not None or r.status_code == 422  # 422: this engine cannot answer that prompt
        return ok

    def pdf_full(self) -> bool:
        pdf = self.pdf()
        data = {"draw_layouts": "true", "extract_images": "true", "dpi": "144"}
        body = self.show(
            "PDF OCR", self.http.post("/pdf/ocr", files={"file": pdf.open("rb")}, data=data), ("pages_processed",)
        )
        if body:
            self.save(f"{pdf.stem}.md", body["markdown"])
            if body.get("layouts_pdf"):
                self.save(f"{pdf.stem}_layouts.pdf", base64.b64decode(body["layouts_pdf"]))
        return body is not None

    def pdf_simple(self) -> bool:
        pdf = self.pdf()
        return (
            self.show("PDF text", self.http.post("/pdf/ocr/simple", files={"file": pdf.open("rb")}), ("pages", "text"))
            is not None
        )

    def batch_json(self) -> bool:
        files = [("files", (p.name, p.read_bytes())) for p in self.images()]
        body = self.show("batch OCR", self.http.post("/batch/ocr", files=files), ("total", "succeeded", "failed"))
        if body:
            self.save("batch_results.json", json.dumps(body, indent=1))
        return body is not None

    def batch_zip(self) -> bool:
        files = [("files", (p.name, p.read_bytes())) for p in self.images()]
        r = self.http.post("/batch/ocr/download", files=files)
        self.show("batch ZIP", r)
        if r.is_success:
            self.save("batch_results.zip", r.content)
        return r.is_success

    def everything(self) -> bool:
        results = {}
        for n in range(1, 9):
            name, fn = MENU[n]
            t0 = time.time()
            results[name] = (fn(self), time.time() - t0)
        print("\n== summary")
        for name, (ok, secs) in results.items():
            print(f"{'PASS' if ok else 'FAIL'}  {name}  ({secs:.1f} s)")
        return all(ok for ok, _ in results.values())


MENU: dict[int, tuple[str, Callable[[Client], bool]]] = {
    1: ("quick test (health + one inference)", Client.quick),
    2: ("image upload (advanced OCR)", Client.upload),
    3: ("every image in the directory", Client.directory),
    4: ("one image, many prompts", Client.prompts),
    5: ("PDF OCR (full)", Client.pdf_full),
    6: ("PDF OCR (simple)", Client.pdf_simple),
    7: ("batch OCR (JSON)", Client.batch_json),
    8: ("batch OCR (ZIP download)", Client.batch_zip),
    9: ("everything", Client.everything),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://localhost:8000")
    ap.add_argument("--item", type=int, choices=sorted(MENU), help="run one menu item and exit")
    ap.add_argument("--file", help="image or PDF to use")
    ap.add_argument("--dir", default=".", help="folder searched for images and PDFs")
    ap.add_argument("--prompt", help="prompt for item 2")
    ap.add_argument("--out", default="test_outputs", help="where results are saved")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    client = Client(args)
    if args.item:
        sys.exit(0 if MENU[args.item][1](client) else 1)
    while True:
        print("\nDeepSeek-OCR service test menu")
        for n, (name, _) in MENU.items():
            print(f" {n}. {name}")
        choice = input("choose 1-9 (q to quit): ").strip().lower()
        if choice in ("q", "quit", "0", ""):
            return
        if choice.isdigit() and int(choice) in MENU:
            MENU[int(choice)][1](client)


if __name__ == "__main__":
    main()
