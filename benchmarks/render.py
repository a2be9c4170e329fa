"""Report rendering benchmark: 100, 1,000 and 10,000 cells from recorded runs (issue 11).

Run as ``.venv/bin/python benchmarks/render.py [--cells 100 1000 10000 10000/10] [--no-browser]``.
Writes ``benchmarks/results/render.json`` and prints a table.

The cells are the recorded runs' (``tests/support/recorded``: the demo's pass, boot-loop, hang,
crash and infra cells, with their events, boots, commands, serial logs and screenshots; the
serial logs, kept cut to 16 KiB in the repository, are grown back to ``--serial-kib``),
repeated over a 50 builds x 20 hardware grid, each copy its own cell and evidence page. In the
recorded mix 7 cells in 10 fail, the worst case for the index (a row per failing cell);
``N/10`` is N cells of which 1 in 10 fails, more like a nightly run. For each size, in a fresh
run folder:

- ``load``: ``load_results`` of the run's results.json (what ``compatlab report`` reads first);
- ``first``: ``render_html`` into the folder, history recorded (the end of a run): the evidence
  pages, then the history and index.html; ``pages`` is the pages' share (from the renderer's
  debug log), ``index`` the rest;
- ``again``: the same render again (``compatlab report`` on a finished run: the pages are there
  and unchanged, the history already holds the run);
- page sizes: index.html, and the evidence pages' median, largest and total;
- ``filter_ms``: with Debian's chromium (headless, via selenium and chromium-driver), the time
  from choosing "any failure" in the index's verdict filter to the page having laid out the
  result, measured in the page; left out, with the reason, when no browser is installed.

Wall and CPU time are both kept: this 2-core machine is shared, and ``load_average`` says how
busy it was. Measured, not asserted; the targets (10,000 cells in under 3 s, index.html under
10 MB, a filter under 1 s) are compared in the printed table only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from compatlab.report import INDEX_FILE, load_results, render_html, write_results  # noqa: E402
from tests.support.recorded_runs import recorded_run, scaled  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "render.json"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TARGET_SECONDS = 3.0
TARGET_INDEX_BYTES = 10 * 1000 * 1000
TARGET_FILTER_MS = 1000.0


class _PagesTime(logging.Handler):
    """Catches the renderer's debug line "N evidence pages in S s"."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seconds: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if "evidence pages in" in str(record.msg) and isinstance(record.args, tuple):
            seconds = record.args[1]
            self.seconds = float(seconds) if isinstance(seconds, int | float) else None


def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def _render(run_dir: Path, pages: _PagesTime) -> dict[str, float]:
    results = load_results(run_dir)
    pages.seconds = None
    _, wall, cpu = _timed(
        lambda: render_html(run_dir, results.run, results.cells, history=run_dir / "history.sqlite")
    )
    rendered = pages.seconds or 0.0
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "pages_wall_s": round(rendered, 3),
        "index_and_history_wall_s": round(wall - rendered, 3),
    }


def _grow_serial_logs(run_dir: Path, size: int) -> None:
    """Bring each recorded serial log (cut to 16 KiB in the repository) back to ``size`` bytes,
    the size a cell's log reaches over its boots, by repeating it: the report reads a log from
    its end, and how far back it must read is part of the cost."""
    for log in (run_dir / "cells").rglob("*.log"):
        data = log.read_bytes()
        if data and len(data) < size:
            log.write_bytes(data * -(-size // len(data)))


def measure(
    size: str, where: Path | None, pages: _PagesTime, browser: Any, serial_bytes: int
) -> dict[str, Any]:
    n, _, every = size.partition("/")
    cells, failing_every = int(n), int(every or 0)
    with tempfile.TemporaryDirectory(prefix=f"compatlab-render-{n}-", dir=where) as tmp:
        run_dir = Path(tmp)
        run, recorded = recorded_run(run_dir)
        _grow_serial_logs(run_dir, serial_bytes)
        written = scaled(recorded, cells, failing_every=failing_every)
        write_results(run_dir, run, written)
        _, load_wall, load_cpu = _timed(lambda: load_results(run_dir))
        first = _render(run_dir, pages)
        again = _render(run_dir, pages)
        sizes = sorted(p.stat().st_size for p in (run_dir / "cells").glob("*.html"))
        out: dict[str, Any] = {
            "cells": cells,
            "failing": sum(1 for c in written if c.verdict.is_failure),
            "results_json_bytes": (run_dir / "results.json").stat().st_size,
            "load": {"wall_s": round(load_wall, 3), "cpu_s": round(load_cpu, 3)},
            "first": first,
            "again": again,
            "index_bytes": (run_dir / INDEX_FILE).stat().st_size,
            "page_bytes": {
                "count": len(sizes),
                "median": int(statistics.median(sizes)),
                "max": sizes[-1],
                "total": sum(sizes),
            },
        }
        if browser is not None and not isinstance(browser, str):
            out["filter_ms"] = _filter_ms(browser, run_dir / INDEX_FILE)
        return out


def _browser() -> Any:
    """A headless chromium driven by selenium, or the reason there is none."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return "no /usr/bin/chromium or /usr/bin/chromedriver (apt: chromium chromium-driver)"
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


# Chooses "any failure" and reports the milliseconds until the filtered grid has been laid out
# (the handler runs synchronously; reading offsetHeight forces the layout it caused).
_FILTER = """
const select = document.querySelector('select[name=verdict]');
const start = performance.now();
select.value = 'failing';
select.dispatchEvent(new Event('change', {bubbles: true}));
void document.body.offsetHeight;
return [performance.now() - start, document.getElementById('shown').textContent];
"""


def _filter_ms(browser: Any, index: Path) -> dict[str, Any]:
    browser.set_page_load_timeout(120)
    _, load_wall, _ = _timed(lambda: browser.get(index.as_uri()))
    times = []
    shown = ""
    for _ in range(4):  # the first is a warm-up (the script's first run is compiled then)
        browser.execute_script(
            "const s = document.querySelector('select[name=verdict]'); s.value = '';"
            "s.dispatchEvent(new Event('change', {bubbles: true}));"
        )
        ms, shown = browser.execute_script(_FILTER)
        times.append(float(ms))
    times = times[1:]
    return {
        "page_load_s": round(load_wall, 2),
        "filter_ms_median": round(statistics.median(times), 1),
        "filter_ms_max": round(max(times), 1),
        "shown": shown,
    }


def _machine(where: Path | None) -> dict[str, Any]:
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")),
            "",
        )  # fmt: skip
    return {
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "tmp_dir": str(where or tempfile.gettempdir()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cells",
        nargs="+",
        default=["100", "1000", "10000", "10000/10"],
        help="sizes: N cells of the recorded mix, or N/K with 1 cell in K failing",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to render (default: a temp)")
    parser.add_argument("--no-browser", action="store_true", help="skip the in-browser filter")
    parser.add_argument(
        "--serial-kib",
        type=int,
        default=190,
        help="size of each cell's serial log (the demo's are 110-200 KiB; default 190)",
    )
    args = parser.parse_args()
    pages = _PagesTime()
    logger = logging.getLogger("compatlab.report")
    logger.addHandler(pages)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    machine = _machine(args.dir)
    browser = "not asked (--no-browser)" if args.no_browser else _browser()
    try:
        sizes = [measure(n, args.dir, pages, browser, args.serial_kib * 1024) for n in args.cells]
    finally:
        if browser is not None and not isinstance(browser, str):
            browser.quit()
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "schema": 1,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "browser": browser if isinstance(browser, str) else "chromium (selenium, headless)",
        "targets": {
            "cells": 10000,
            "render_s": TARGET_SECONDS,
            "index_bytes": TARGET_INDEX_BYTES,
            "filter_ms": TARGET_FILTER_MS,
        },
        "sizes": sizes,
        "serial_log_bytes": args.serial_kib * 1024,
        "what": "render_html of N recorded cells into a fresh run folder (first) and again "
        "(pages unchanged); load = load_results; times in seconds, sizes in bytes",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    _print(report)


def _print(report: dict[str, Any]) -> None:
    machine = report["machine"]
    print(f"load average {machine['load_average_before']} on {machine['cpus']} CPUs")
    print(
        "   cells  failing   load s   first s (cpu)   pages s   index s   again s   index MB"
        "   page kB   filter ms"
    )
    for s in report["sizes"]:
        f, a = s["first"], s["again"]
        filt = s.get("filter_ms", {}).get("filter_ms_median", "-")
        print(
            f"{s['cells']:>8} {s['failing']:>8} {s['load']['wall_s']:>8.2f}"
            f" {f['wall_s']:>8.2f} ({f['cpu_s']:>5.2f})"
            f" {f['pages_wall_s']:>9.2f} {f['index_and_history_wall_s']:>9.2f}"
            f" {a['wall_s']:>9.2f} {s['index_bytes'] / 1e6:>10.2f}"
            f" {s['page_bytes']['median'] / 1e3:>9.1f} {filt:>11}"
        )
    if isinstance(report["browser"], str) and "selenium, headless" not in report["browser"]:
        print(f"no in-browser filter timing: {report['browser']}")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
