"""A real browser for the report's pages: Debian's chromium, headless, driven by selenium through
Debian's chromium-driver (``apt-get install chromium chromium-driver``, which ``make setup``
does).

Why selenium and not Playwright: both drive ``/usr/bin/chromium`` here, but Playwright's wheel
carries its own Node.js driver (193 MB installed against selenium's 70 MB with its
dependencies, chromium-driver adding 25 MB) and took 4.1-4.5 s to open and close a page
against selenium's 2.8-3.4 s on this 2-core machine. Selenium is given both paths, so its
driver manager never looks for a download.

Under ``make test`` (``COMPATLAB_REQUIRE_LAB=1``) a missing browser, driver or selenium fails
the test: a green ``make test`` means the pages were opened. Elsewhere the test is skipped, with
the reason. The browser runs as root (``--no-sandbox``, which root needs), with no network:
every page is a file:// URL and the report fetches nothing.

Every page is watched: the browser's console (an error, or a Content-Security-Policy report,
which Chrome logs as an error) and a ``securitypolicyviolation`` listener installed before any
page script runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.lab import REQUIRE_LAB, lab_required

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# Runs in every page before its own scripts (a DevTools script is outside the page's CSP).
WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sample);
});
"""


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no {CHROMIUM} (apt-get install chromium)"
    if not CHROMEDRIVER.exists():
        return f"no {CHROMEDRIVER} (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless chromium under selenium, watching every page for CSP violations."""
    missing = _missing()
    if missing is not None:
        if lab_required():
            pytest.fail(
                f"{missing}: make test opens the report in Debian's chromium "
                f"(make setup installs it; unset {REQUIRE_LAB} to skip instead)",
                pytrace=False,
            )
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # chromium's sandbox cannot run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1400,1000",
        # No network: a page that tried to fetch anything would log a console error.
        "--disable-background-networking",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where a test keeps its screenshots (under its own tmp dir, kept by pytest)."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder
