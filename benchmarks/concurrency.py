"""Cells side by side: the demo's cells at 1 and at 2 concurrent cells on this machine (issue 10).

Run as ``.venv/bin/python benchmarks/concurrency.py [-k EXPR] [--slots 1,2]``. For each slot
count it runs ``pytest --matrix matrix/demo.yaml`` (with ``-k``; default ``bios-1cpu``: the
1-vCPU cells, so that two fit side by side on a 2-core host) with a lab file whose capacity is
``slots`` vCPUs, one after the other in this one run, and writes
``benchmarks/results/concurrency.json``:

- wall time of each run (pytest start to exit), and the speedup of N slots over 1;
- parallel efficiency = (sum of the cells' own seconds / slots) / wall time: 1.0 when the slots
  were busy all the time; it says nothing about whether a cell got slower side by side, which
  the cells' median seconds at 1 and N slots show;
- every cell's verdict at each slot count: they must be the same (a side-by-side run that
  changes a verdict is a bug, not a speedup).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "concurrency.json"


def run(slots: int, select: str, folder: Path) -> dict[str, Any]:
    lab = folder / f"lab-{slots}.yaml"
    lab.write_text(f"capacity: {{vcpus: {slots}, memory: {4096 * slots}}}\n")
    report = folder / f"report-{slots}"
    command = [
        *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"),
        *("--matrix", "matrix/demo.yaml", "-k", select),
        *("--matrix-hosts", str(lab), "--matrix-report", str(report)),
    ]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"pytest exited {done.returncode}:\n{done.stdout[-4000:]}{done.stderr}")
    cells = json.loads((report / "results.json").read_text())["cells"]
    seconds = [float(c["seconds"]) for c in cells]
    return {
        "slots": slots,
        "wall_seconds": round(wall, 1),
        "cells": len(cells),
        "sum_cell_seconds": round(sum(seconds), 1),
        "median_cell_seconds": round(statistics.median(seconds), 1),
        "parallel_efficiency": round(sum(seconds) / slots / wall, 3),
        "verdicts": {c["id"]: c["verdict"] for c in cells},
        "report": str(report),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="select", default="bios-1cpu")
    parser.add_argument("--slots", default="1,2")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="compatlab-concurrency-"))
    runs = [run(int(n), args.select, folder) for n in args.slots.split(",")]
    base = runs[0]
    for r in runs[1:]:
        r["speedup_over_1"] = round(base["wall_seconds"] / r["wall_seconds"], 2)
        r["same_verdicts_as_1"] = r["verdicts"] == base["verdicts"]
    best = runs[-1]
    result = {
        "benchmark": "concurrency",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "matrix": "matrix/demo.yaml",
        "select": args.select,
        "runs": runs,
        "targets": {
            "parallel_efficiency_at_capacity": {
                "target": ">= 0.90",
                "measured": best["parallel_efficiency"],
                "met": best["parallel_efficiency"] >= 0.90,
            },
            "speedup_over_sequential": {
                "target": ">= 1.8",
                "measured": best.get("speedup_over_1"),
                "met": (best.get("speedup_over_1") or 0) >= 1.8,
            },
        },
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    for r in runs:
        print(
            f"{r['slots']} slot(s): {r['cells']} cells in {r['wall_seconds']} s, efficiency "
            f"{r['parallel_efficiency']}, median cell {r['median_cell_seconds']} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
