"""The report as a reader sees it, in Debian's chromium (issue 11's browser test).

A demo report is rendered from the recorded runs (``tests/support/recorded``) plus a hostile
cell (``<script>``, quotes, handler attributes and ``javascript:`` URLs in its product name,
reason, serial log, commands and artifact paths), with ``compatlab report`` and ``compatlab
signoff RUN_DIR --policy configs/rollout.yaml``, in the test's tmp dir. Then, in the browser:
the index opens; a verdict filter hides every other cell, says how many it shows and goes into
the URL; a chip leads to the cell's evidence page, which shows the payloads as text; back on
the index the filter is still applied; signoff.html opens. The search box finds cells by their
crash signature, and the failing cells' rows are shown and hidden with their chips. Each page
is screenshotted (``<tmp>/screenshots``) and must have logged no console error and no CSP
violation, and no payload may have run (``window.__pwned`` stays undefined).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compatlab.cli import main
from compatlab.model import CellResult
from compatlab.report import write_results
from compatlab.report.crashes import crash_signatures
from tests.support.recorded_runs import hostile_cell, recorded_run

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "configs" / "rollout.yaml"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CellResult], CellResult]:
    """The demo report and its sign-off, rendered once for the module's tests."""
    tmp_path = tmp_path_factory.mktemp("report")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run, cells = recorded_run(run_dir)
    hostile = hostile_cell(run_dir)
    cells.append(hostile)
    for cell in cells:  # the policy's rings 0 and 1 weigh the fleet: every cell its share
        cell.fleet_share = 1 / len(cells)
    write_results(run_dir, run, cells)
    history = tmp_path / "history.sqlite"
    assert main(["report", str(run_dir), "--history", str(history)]) == 0
    assert main(["signoff", str(run_dir), "--policy", str(POLICY)]) in (0, 1)
    assert (run_dir / "signoff.html").is_file()
    return run_dir, cells, hostile


def _settled(browser: Any, what: str) -> None:
    """No console error, no CSP violation and no payload run on the page now open."""
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"{what}: console errors {errors}"
    violations = browser.execute_script("return window.__cspViolations || null")
    assert violations == [], f"{what}: CSP violations {violations} (None: the watch did not run)"
    assert browser.execute_script("return typeof window.__pwned") == "undefined", (
        f"{what}: a hostile payload ran: {browser.execute_script('return window.__pwned')}"
    )


def _shot(browser: Any, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    assert browser.save_screenshot(str(path)), name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _visible_chips(browser: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return [c for c in browser.find_elements(By.CSS_SELECTOR, "a.chip") if c.is_displayed()]


def test_filter_follow_a_cell_and_sign_off(
    browser: Any,
    report: tuple[Path, list[CellResult], CellResult],
    screenshots: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    run_dir, cells, hostile = report
    browser.get_log("browser")  # drop what an earlier page left
    browser.get((run_dir / "index.html").as_uri())
    _settled(browser, "index.html")
    assert len(_visible_chips(browser)) == len(cells)
    shown = browser.find_element(By.ID, "shown")
    assert shown.text == f"all {len(cells)} cells"

    crashed = {c.id for c in cells if c.verdict.value == "crash"}
    assert hostile.id in crashed and len(crashed) < len(cells)
    Select(browser.find_element(By.NAME, "verdict")).select_by_value("crash")
    WebDriverWait(browser, 10).until(lambda b: "of" in b.find_element(By.ID, "shown").text)
    chips = _visible_chips(browser)
    assert {c.get_attribute("data-cell") for c in chips} == crashed
    assert shown.text == f"{len(crashed)} of {len(cells)} cells"
    assert "verdict=crash" in browser.execute_script("return window.location.hash")
    _settled(browser, "index.html, filtered")
    _shot(browser, screenshots, "index-filtered")

    chip = next(c for c in chips if c.get_attribute("data-cell") == hostile.id)
    chip.click()
    WebDriverWait(browser, 10).until(
        lambda b: b.current_url.endswith(".html") and "cells/" in b.current_url
    )
    _settled(browser, "the hostile cell's page")
    assert browser.find_element(By.TAG_NAME, "h1").text == hostile.id
    serial = browser.find_element(By.CSS_SELECTOR, "pre.serial").text
    assert "<script>window.__pwned='serial'</script>" in serial
    assert "<img src=x onerror=" in serial
    assert hostile.reason in browser.find_element(By.CSS_SELECTOR, ".reason").text
    links = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
    assert links and all(h.startswith("file:") for h in links), links
    _shot(browser, screenshots, "cell-hostile")

    browser.back()
    WebDriverWait(browser, 10).until(lambda b: b.current_url.split("#")[0].endswith("index.html"))
    select = Select(browser.find_element(By.NAME, "verdict"))
    assert select.first_selected_option.get_attribute("value") == "crash"
    assert {c.get_attribute("data-cell") for c in _visible_chips(browser)} == crashed
    _settled(browser, "index.html, back")

    browser.get((run_dir / "signoff.html").as_uri())
    _settled(browser, "signoff.html")
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "internal" in text and "broad" in text, text[:500]
    _shot(browser, screenshots, "signoff")
    # A blocking cell's link opens its evidence page in the report beside the sign-off.
    blocking = browser.find_elements(By.CSS_SELECTOR, "td a[href]")
    assert blocking, "no cell link on signoff.html"
    blocking[0].click()
    WebDriverWait(browser, 10).until(lambda b: "/cells/" in b.current_url)
    _settled(browser, "a cell's page, from signoff.html")


def test_every_evidence_page_opens_cleanly(
    browser: Any, report: tuple[Path, list[CellResult], CellResult], screenshots: Path
) -> None:
    from selenium.webdriver.common.by import By

    run_dir, cells, _ = report
    browser.get_log("browser")
    browser.get((run_dir / "index.html").as_uri())
    hrefs = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.chip")]
    assert len(hrefs) == len(cells)
    for n, href in enumerate(hrefs):
        browser.get(href)
        _settled(browser, href)
        assert browser.find_element(By.TAG_NAME, "h1").text in {c.id for c in cells}
        if n == 0:
            _shot(browser, screenshots, "cell-first")


def test_the_search_box_finds_a_signature_and_rows_follow_their_chips(
    browser: Any, report: tuple[Path, list[CellResult], CellResult]
) -> None:
    """The search box reads each failing cell's row (signature, reason) from the page, not a
    copy in every chip; a table's row is shown or hidden with its cell's chip."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run_dir, cells, _ = report
    browser.get_log("browser")
    browser.get((run_dir / "index.html").as_uri() + "#q=fatal%20exception")
    _settled(browser, "index.html, searched")
    expected = {
        c.id
        for c in cells
        if c.verdict.is_failure and "fatal exception" in (", ".join(crash_signatures(c))).lower()
    }
    assert expected and len(expected) < len(cells)
    WebDriverWait(browser, 10).until(lambda b: "of" in b.find_element(By.ID, "shown").text)
    assert {c.get_attribute("data-cell") for c in _visible_chips(browser)} == expected
    rows = browser.find_elements(By.CSS_SELECTOR, "#failing-cells tr[data-cell]")
    shown = {r.get_attribute("data-cell") for r in rows if r.is_displayed()}
    assert shown == expected and len(rows) > len(shown)

    search = browser.find_element(By.NAME, "q")
    search.clear()
    search.send_keys("no cell has this text")
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "shown").text == f"0 of {len(cells)} cells"
    )
    assert not [r for r in rows if r.is_displayed()]
    assert "q=no+cell+has+this+text" in browser.execute_script("return window.location.hash")
    _settled(browser, "index.html, nothing found")
