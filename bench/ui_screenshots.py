"""Screenshots of the web page with a finished job, at desktop and phone widths, for the README.

    python bench/ui_screenshots.py [--out docs] [--pdf ../shared/testdata/docling/multi_page.pdf --pages 1-2]

Starts the service on the CPU engine (loopback), submits the PDF through the page in headless Chromium,
waits for every page, clicks a box (so the highlight shows) and saves docs/ui-desktop.png and docs/ui-phone.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser
from service import ROOT, start_service, stop_service


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--pdf", type=Path, default=ROOT.parent / "shared" / "testdata" / "docling" / "multi_page.pdf")
    ap.add_argument("--pages", default="1-2")
    args = ap.parse_args()
    if reason := browser.missing():
        sys.exit(reason)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as data:
        proc, base = start_service({"DATA_DIR": data, "ENGINE": "cpu"})
        try:
            shots = []
            d = browser.chrome(1360, 1250)
            try:
                browser.submit_files(d, base, [args.pdf], pages=args.pages)
                job_id = browser.wait_done(d)
                d.execute_script("document.querySelectorAll('.page .box')[3].click(); window.scrollTo(0, 0)")
                time.sleep(0.8)
                shots.append(browser.screenshot(d, args.out / "ui-desktop.png"))
            finally:
                d.quit()
            d = browser.chrome(390, 1500)
            try:
                d.get(f"{base}/ui#job={job_id}")  # the page follows a job named in its address
                browser.wait_done(d, 120)
                d.execute_script(
                    "const b = document.querySelectorAll('.page .box')[3]; b.click();"
                    "window.scrollTo(0, document.querySelector('.file').offsetTop - 8)"
                )
                time.sleep(0.8)
                shots.append(browser.screenshot(d, args.out / "ui-phone.png"))
            finally:
                d.quit()
        finally:
            stop_service(proc)
    for p in shots:
        print(f"{p}: {p.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
