"""Demo-matrix benchmark: wall time, where the time goes, and panic-to-verdict latency.

Run as ``.venv/bin/python benchmarks/demo.py [--run-dir DIR] [-k EXPR]``. Without ``--run-dir``
it runs ``pytest --matrix matrix/demo.yaml`` (optionally ``-k``) into a fresh report folder and
analyses that; with it, it analyses an existing run. Writes ``benchmarks/results/demo.json``.

Where a cell's time goes is read from its own results.json timeline:

- guest boot: each boot's seconds (firmware + kernel + init until the channel answered);
- guest commands: each command's seconds as the channel measured it (installers, checks);
- guest shutdown: from a reboot the scenario asked for to the reset the hypervisor saw;
- bake: the seconds the scenario deliberately waited with the guest up;
- compatlab's overhead: the rest -- provisioning (overlay, define, start), media changes,
  power cycles of crashed guests, evidence, and the runner's own bookkeeping.

Boot to agent-ready, per build and hardware profile (the figure scenario budgets are set with):
the medians of the completed boots' seconds, cold start (first boot of a fresh VM) and reboots.

Panic-to-verdict: for each cell whose boot loop was decided, the time from the arrival of the
last QMP ``GUEST_PANICKED`` event to the scenario's ``decided`` record (both on the runner's
monotonic clock). The QMP event itself arrives 2-3 ms after QEMU's own timestamp
(benchmarks/lab_latency.py measures that leg).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "demo.json"


def run_demo(report: Path, keyword: str | None) -> float:
    command = [
        str(ROOT / ".venv" / "bin" / "pytest"),
        "-p",
        "no:cacheprovider",
        "-q",
        "--matrix",
        "matrix/demo.yaml",
        "--matrix-report",
        str(report),
    ]
    if keyword:
        command += ["-k", keyword]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, check=False)
    if done.returncode > 1:  # 1 = some cells failed, which the demo is meant to show
        sys.exit(f"the demo run failed with exit {done.returncode}")
    return time.monotonic() - started


def _bake_seconds(events: list[dict[str, Any]]) -> float:
    total = 0.0
    for this, after in itertools.pairwise(events):
        if this["kind"] == "phase" and str(this["detail"]).startswith("baking"):
            total += after["t"] - this["t"]
    return total


def _shutdown_seconds(events: list[dict[str, Any]]) -> float:
    """From each reboot the scenario asked for to the reset the hypervisor saw: the guest's
    own shutdown sequence."""
    total = 0.0
    asked: float | None = None
    for event in events:
        if event["kind"] == "reboot_requested":
            asked = event["t"]
        elif event["kind"] == "reboot" and asked is not None:
            total += event["t"] - asked
            asked = None
    return total


def analyse_cell(cell: dict[str, Any]) -> dict[str, Any]:
    own = [e for e in cell["events"] if not e["source"].startswith("rerun/")]
    boots = sum(b["seconds"] for b in cell["boots"])
    commands = sum(c["seconds"] for c in cell["commands"])
    bake = _bake_seconds(own)
    shutdown = _shutdown_seconds(own)
    first_vm = max((e["t"] for e in own), default=0.0)
    # The cell's seconds include a baseline rerun on a second VM; its guest time is not split
    # out in results.json, so the split is over the first VM's timeline only.
    guest = boots + commands + bake + shutdown
    overhead = max(first_vm - guest, 0.0)
    out: dict[str, Any] = {
        "id": cell["id"],
        "verdict": cell["verdict"],
        "seconds": cell["seconds"],
        "first_vm_seconds": round(first_vm, 2),
        "guest_boot_seconds": round(boots, 2),
        "guest_command_seconds": round(commands, 2),
        "bake_seconds": round(bake, 2),
        "guest_shutdown_seconds": round(shutdown, 2),
        "overhead_seconds": round(overhead, 2),
        "overhead_share": round(overhead / first_vm, 4) if first_vm else None,
    }
    decided = [e for e in own if e["kind"] == "decided"]
    panics = [e for e in own if e["kind"] == "guest_panicked"]
    if decided and panics:
        last = max(
            (p for p in panics if p["t"] <= decided[0]["t"]), key=lambda p: p["t"], default=None
        )
        if last is not None:
            out["panic_to_verdict_ms"] = round((decided[0]["t"] - last["t"]) * 1000, 2)
    return out


def analyse(run_dir: Path, wall: float | None) -> dict[str, Any]:
    doc = json.loads((run_dir / "results.json").read_text())
    if wall is None:  # an existing run: its own start and finish
        run = doc["run"]
        wall = (
            datetime.fromisoformat(run["finished"]) - datetime.fromisoformat(run["started"])
        ).total_seconds()
    cells = [analyse_cell(c) for c in doc["cells"]]
    shares = [c["overhead_share"] for c in cells if c["overhead_share"] is not None]
    latencies = [c["panic_to_verdict_ms"] for c in cells if "panic_to_verdict_ms" in c]
    first_vm = sum(c["first_vm_seconds"] for c in cells)
    overhead = sum(c["overhead_seconds"] for c in cells)
    boot_to_agent: dict[str, dict[str, Any]] = {}
    for cell in doc["cells"]:
        key = f"{cell['build']}/{cell['hardware']}"
        entry = boot_to_agent.setdefault(key, {"cold": [], "reboot": []})
        for boot in cell["boots"]:
            if boot["outcome"] == "completed":
                entry["cold" if boot.get("phase") == "provision" else "reboot"].append(
                    boot["seconds"]
                )
    boot_table = {
        key: {
            "cold_start_median_s": round(statistics.median(v["cold"]), 2) if v["cold"] else None,
            "reboot_median_s": round(statistics.median(v["reboot"]), 2) if v["reboot"] else None,
            "samples": len(v["cold"]) + len(v["reboot"]),
        }
        for key, v in sorted(boot_to_agent.items())
    }
    return {
        "run_dir": str(run_dir),
        "boot_to_agent_ready": boot_table,
        "cells": len(cells),
        "wall_seconds": round(wall, 1) if wall is not None else None,
        "cell_seconds_total": round(sum(c["seconds"] for c in cells), 1),
        "verdicts": {
            v: sum(1 for c in cells if c["verdict"] == v)
            for v in sorted({c["verdict"] for c in cells})
        },
        "overhead_share_overall": round(overhead / first_vm, 4) if first_vm else None,
        "overhead_share_median": round(statistics.median(shares), 4) if shares else None,
        "overhead_target": 0.02,
        "panic_to_verdict_ms_median": round(statistics.median(latencies), 2) if latencies else None,
        "panic_to_verdict_ms_max": max(latencies) if latencies else None,
        "panic_to_verdict_target_ms": 1000,
        "per_cell": cells,
        "machine": {
            "python": platform.python_version(),
            "nproc": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="analyse this run instead of running")
    parser.add_argument("-k", dest="keyword", help="run only the demo cells matching -k")
    args = parser.parse_args()
    wall = None
    run_dir = args.run_dir
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="compatlab-bench-demo-"))
        wall = run_demo(run_dir, args.keyword)
    data = analyse(run_dir, wall)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(RESULTS)
    for cell in data["per_cell"]:
        share = cell["overhead_share"]
        print(
            f"{cell['id']:45} {cell['verdict']:12} {cell['seconds']:7.1f} s  overhead "
            f"{cell['overhead_seconds']:5.1f} s ({share:.1%})"
            if share is not None
            else ""
        )
    for key, row in data["boot_to_agent_ready"].items():
        print(
            f"boot to agent {key:36} cold {row['cold_start_median_s']} s, "
            f"reboot {row['reboot_median_s']} s"
        )
    print(
        f"wall {data['wall_seconds']} s; overhead {data['overhead_share_overall']:.1%} overall; "
        f"panic->verdict median {data['panic_to_verdict_ms_median']} ms"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
