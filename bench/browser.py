"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, for the web page's tests and
screenshots. Nothing is downloaded: the browser and its driver must be installed
(`apt-get install -y chromium chromium-driver`)."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)


def missing() -> str | None:
    """Why a browser cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    if not any(shutil.which(b) for b in CHROMIUM):
        return "chromium is not installed (apt-get install -y chromium chromium-driver)"
    if not any(shutil.which(d) for d in DRIVER):
        return "chromedriver is not installed (apt-get install -y chromium-driver)"
    return None


def chrome(width: int = 1360, height: int = 1000, downloads: Path | None = None):
    """A headless Chromium window of this size (CSS pixels)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = next(shutil.which(b) for b in CHROMIUM if shutil.which(b))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={width},{height}")
    if downloads:
        opts.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    service = Service(executable_path=next(shutil.which(d) for d in DRIVER if shutil.which(d)))
    driver = webdriver.Chrome(options=opts, service=service)
    # The viewport exactly this size (the window frame would otherwise take some of it).
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    return driver


def submit_files(
    driver, base: str, paths: list[Path], pages: str | None = None, prompt_text: str | None = None
) -> None:
    """Open /ui, choose the files, set the page range (and a prompt of one's own), press Read."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/ui")
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#prompt option")))
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    if pages:
        driver.find_element(By.ID, "pages").send_keys(pages)
    if prompt_text:
        driver.find_element(By.ID, "prompt-text").send_keys(prompt_text)
    driver.find_element(By.ID, "run").click()


def wait_done(driver, timeout: float = 300) -> str:
    """The job id once the page shows the finished job (body[data-job-done])."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = driver.execute_script("return document.body.dataset.jobDone || ''")
        if done:
            return done
        time.sleep(0.3)
    raise TimeoutError("the page did not finish the job in time")


def screenshot(driver, path: Path, max_height: int | None = None) -> Path:
    """A PNG of the viewport, palette-reduced to keep it small."""
    from PIL import Image

    img = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    if max_height and img.height > max_height:
        img = img.crop((0, 0, img.width, max_height))
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path
