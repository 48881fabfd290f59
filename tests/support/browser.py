"""Headless Chromium (Debian's chromium and chromium-driver) through Selenium, for the
report tests; run as a script it saves screenshots of pages:

    python tests/browser.py sage-demo-report.html docs/images/report.png
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

# Flags for a closed network (no background connections, no sync) and a root user.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


@dataclass
class PageCheck:
    errors: list[str]
    """Console messages of level SEVERE (errors), and images that failed to load."""
    images: int
    svgs: int
    overflow: int
    """How many pixels the page is wider than the window (0: no sideways scrolling)."""


def open_browser(width: int = 1366, height: int = 900) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='sage-chromium-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def check_page(driver: Any, page: Path) -> PageCheck:
    driver.get(page.absolute().as_uri())
    broken = driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)"
    )
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return PageCheck(
        errors=errors + [f"image not shown: {alt}" for alt in broken],
        images=driver.execute_script("return document.images.length"),
        svgs=driver.execute_script("return document.querySelectorAll('svg.graph').length"),
        overflow=driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        ),
    )


def screenshot(driver: Any, page: Path, out: Path, height: int | None = None) -> None:
    """The page at the window's width, ``height`` pixels tall (default: all of it)."""
    driver.get(page.absolute().as_uri())
    full = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    driver.set_window_size(width, min(full, height) if height else full)
    out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(out))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python tests/browser.py PAGE.html OUT.png [HEIGHT]")
    browser = open_browser(width=1280)
    try:
        limit = int(sys.argv[3]) if len(sys.argv) == 4 else None
        screenshot(browser, Path(sys.argv[1]), Path(sys.argv[2]), limit)
    finally:
        browser.quit()
