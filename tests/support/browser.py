"""A real browser for the page tests: Debian's headless Chromium driven by Playwright (no browser download).

``.ci/run`` installs the `chromium` package when it is missing; Playwright launches it through
``executable_path``. The flags keep Chromium off the network this machine does not have (background
networking, component updates, sync) and give each test an empty profile. A failing test's last page is
kept as a screenshot under ``$SMARTFLOW_TEST_ARTIFACTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    path = os.environ.get("SMARTFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("Chromium is not installed (apt-get install chromium; .ci/run does it)")
    return path


def artifacts_dir(default: Path) -> Path:
    directory = Path(os.environ.get("SMARTFLOW_TEST_ARTIFACTS") or default)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def launch_browser() -> Iterator[object]:
    """A Playwright ``Browser`` on Debian's Chromium, closed (with its Playwright driver) afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()
