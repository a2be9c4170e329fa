"""results.json write benchmark: the cost of recording one more cell in a 1000-cell run (issue 8).

Run as ``.venv/bin/python benchmarks/results_write.py [--cells 1000]``. Writes
``benchmarks/results/results_write.json`` and prints a short table.

results.json is rewritten atomically after every cell (temporary file, fsync, rename), so a
killed run keeps every verdict it reached. Two writers record the same 1000 cells side by side
in one run, each into its own folder on the same file system:

- ``before``: the writer at commit ``c62af8a`` -- every add serialises the whole run again
  (``json.dumps`` of every cell) and writes it;
- ``after``: :class:`compatlab.report.ResultsWriter` -- each cell serialised once when added
  and kept as text; an add joins the texts and writes them.

The cells are shaped like a real run's (a boot loop's events and boots, installer commands
with a few KiB of output each, checks, phases). Figures: wall and CPU time of the add of the
last cell (the most expensive one), of all adds, and the bytes written. Measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from compatlab.model import (  # noqa: E402
    Attribution,
    Boot,
    Bugcheck,
    CellResult,
    CommandRecord,
    Event,
    Verdict,
)
from compatlab.report import ResultsWriter, RunInfo, results_document  # noqa: E402
from compatlab.report.results import write_text_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "results_write.json"
BEFORE = "c62af8a"


class BeforeWriter:
    """ResultsWriter.add as it was at ``BEFORE``: the whole document serialised per add."""

    def __init__(self, run_dir: Path, run: RunInfo) -> None:
        self.path = run_dir / "results.json"
        self._run = run
        self._cells: dict[tuple[str, str], CellResult] = {}
        self._lock = threading.Lock()

    def add(self, cell: CellResult) -> Path:
        with self._lock:
            self._cells[(cell.matrix, cell.id)] = cell
            return self._write(self._cells.values())

    def _write(self, cells: Iterable[CellResult]) -> Path:
        document = results_document(self._run, cells)
        text = json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False)
        return write_text_atomic(self.path, text + "\n")


def _cell(n: int) -> CellResult:
    build = f"win{10 + n % 3}-{22 + n % 2}h2"
    hardware = ["bios-1cpu", "uefi-2cpu", "uefi-sb-tpm", "uefi-4cpu"][n % 4]
    products = ("acme-av", "other-edr")[: n % 3]
    failing = n % 5 == 0
    events = [Event(0.0, "libvirt", "started", "booted")]
    events += [
        Event(8.0 + i, "libvirt", "crashed" if failing else "reboot", "panicked" if failing else "")
        for i in range(12)
    ]
    events += [
        Event(21.0 + i, "serial", "boot_marker", "labguest: boot complete") for i in range(8)
    ]
    output = "".join(f"[{i:04d}] extracting component {i} of 60 ... done\n" for i in range(60))
    return CellResult(
        id=f"{build}/{hardware}/{'+'.join(products) or 'none'}/{n}",
        build=build,
        hardware=hardware,
        products=products,
        verdict=Verdict.BOOT_LOOP if failing else Verdict.PASS,
        attribution=Attribution.CANDIDATE if failing else None,
        bugcheck=Bugcheck("0x50", "PAGE_FAULT_IN_NONPAGED_AREA", ("0xffff", "0x0", "0x1", "0x2"))
        if failing
        else None,
        boots=[Boot(i, "crash" if failing else "completed", 7.4 + i, "boots") for i in range(4)],
        events=events,
        artifacts={"serial_log": f"cells/c{n}/serial.log", "screenshot": f"cells/c{n}/s.png"},
        seconds=48.2 + n % 7,
        reason="boot loop: 3 failed boots in a row" if failing else "pass: 3 boots completed",
        commands=[
            CommandRecord("products", f"install product {p}", 0, output, "", 12.0, "success")
            for p in products
        ]
        + [
            CommandRecord("install", "setup.sh --quiet", 0, output, "warning: x\n", 30.0, "success")
        ],
        checks=[{"name": "service acme-av", "passed": True, "detail": ""} for _ in range(3)],
        matrix="matrix/nightly.yaml",
        phases=[
            {"phase": p, "outcome": "pass", "detail": "", "t": 1.0, "seconds": 2.0}
            for p in ("provision", "products", "baseline", "install", "boots", "checks")
        ],
    )


def _measure(add: Callable[[CellResult], Path], cells: list[CellResult]) -> dict[str, Any]:
    wall: list[float] = []
    cpu: list[float] = []
    written = 0
    for cell in cells:
        w, c = time.perf_counter(), time.process_time()
        path = add(cell)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
        written += path.stat().st_size
    last = slice(-10, None)
    return {
        "file_bytes": path.stat().st_size,
        "bytes_written_total": written,
        "last_10_adds_ms": {
            "wall_median": round(statistics.median(wall[last]) * 1000, 2),
            "cpu_median": round(statistics.median(cpu[last]) * 1000, 2),
        },
        "first_10_adds_ms": {
            "wall_median": round(statistics.median(wall[:10]) * 1000, 2),
            "cpu_median": round(statistics.median(cpu[:10]) * 1000, 2),
        },
        "all_adds_s": {"wall": round(sum(wall), 2), "cpu": round(sum(cpu), 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp)")
    args = parser.parse_args()
    cells = [_cell(n) for n in range(args.cells)]
    run = RunInfo(
        id="bench",
        matrix=("matrix/nightly.yaml",),
        candidate_name="sensor-content",
        candidate_version="291",
        started=datetime(2024, 7, 19, 4, 9, tzinfo=UTC),
    )
    with tempfile.TemporaryDirectory(prefix="compatlab-results-", dir=args.dir) as tmp:
        before_dir, after_dir = Path(tmp) / "before", Path(tmp) / "after"
        before = _measure(BeforeWriter(before_dir, run).add, cells)
        after = _measure(ResultsWriter(after_dir, run).add, cells)
        # The two files differ only in the mid-run "finished" stamp (the time of the write).
        same = _without_stamp(before_dir) == _without_stamp(after_dir)
        fs = os.statvfs(tmp)
    report = {
        "schema": 1,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "cells": args.cells,
        "file_system_block": fs.f_bsize,
        "before_commit": BEFORE,
        "same_document": same,
        "before": before,
        "after": after,
        "what": "adding cells one by one to a run's results.json, each add an atomic, fsynced "
        "rewrite; last_10_adds = the cost of one more cell at the end of the run",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.cells} cells, results.json of {after['file_bytes'] / 1e6:.1f} MB at the end")
    print("          last add (wall / cpu ms)   all adds (wall / cpu s)   written")
    for name, r in (("before", before), ("after", after)):
        last, total = r["last_10_adds_ms"], r["all_adds_s"]
        print(
            f"  {name:<7} {last['wall_median']:>8.1f} / {last['cpu_median']:<8.1f}"
            f"        {total['wall']:>7.2f} / {total['cpu']:<7.2f}"
            f"       {r['bytes_written_total'] / 1e9:.2f} GB"
        )
    print(f"same document: {same}; written to {RESULTS.relative_to(ROOT)}")


def _without_stamp(run_dir: Path) -> Any:
    document = json.loads((run_dir / "results.json").read_text())
    document["run"].pop("finished")
    return document


if __name__ == "__main__":
    main()
