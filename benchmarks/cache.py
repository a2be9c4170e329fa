"""Cached pre-candidate layers (issue 12): the demo from scratch, from a cold cache and from a warm
one, side by side in one run on this machine.

Run as ``.venv/bin/python benchmarks/cache.py [-k EXPR] [--matrix PATH ...]``; writes
``benchmarks/results/cache.json``. In this order, each a ``pytest --matrix`` run of the same
cells:

1. ``sequential``: from scratch (``--matrix-cache off``), one cell at a time (a lab file whose
   capacity fits one demo cell and no second: 2 vCPUs, 800 MiB);
2. ``scratch``: from scratch at the default concurrency (the machine's capacity);
3. ``cold``: the cache emptied first (``compatlab cache prune --all``), default concurrency:
   each configuration's layer is built by its cell's builder VM;
4. ``warm``: the same again: every cell starts from its layer, as the next night's run would.

Then, with no VM, the cache hit itself: computing the key, finding and locking the layer, making
the overlay on it and copying its UEFI variables and TPM state (``hit_overhead``), N times per
layer. A memory layer's cell then copies its save image under its own name and libvirt restores
it: those seconds are read from the warm run's own ``memory_restored`` notes and added
(``hit_with_restore``).

Per cell and run: seconds, verdict, attribution, crash signature (the three must not differ
between runs), seconds before the candidate's install, and every second attributed
(benchmarks/guest_time.py). Targets: warm pass cells <= 65% of scratch; warm demo >= 3x faster
than the sequential scratch run; a hit under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "cache.json"
SEQUENTIAL_LAB = "capacity: {vcpus: 2, memory: 800}\n"  # one demo cell fits, never two
DEFAULT_SELECT = "tinylinux-a and (bios-1cpu or (uefi-sb-tpm-2cpu and acme-av and not other))"

from benchmarks.guest_time import attribute, before_install, vm_timelines  # noqa: E402


def pytest_run(
    name: str, matrices: list[str], select: str, folder: Path, *extra: str
) -> dict[str, Any]:
    report = folder / f"report-{name}"
    command = [
        *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"),
        *(arg for m in matrices for arg in ("--matrix", m)),
        *("-k", select, "--matrix-report", str(report), *extra),
    ]
    load = os.getloadavg()[0]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{name}: pytest exited {done.returncode}:\n{done.stdout[-4000:]}")
    doc = json.loads((report / "results.json").read_text())
    bake = {m: _bake(Path(ROOT / m)) for m in matrices}
    cells = {}
    for cell in doc["cells"]:
        seconds = attribute(cell, bake.get(cell["matrix"], bake[matrices[0]]))
        cells[f"{Path(cell['matrix']).name}::{cell['id']}"] = {
            "seconds": round(float(cell["seconds"]), 1),
            "verdict": cell["verdict"],
            "attribution": cell.get("attribution"),
            "signature": (cell.get("bugcheck") or {}).get("signature"),
            "before_install_seconds": before_install(cell),
            "restores": _restores(cell),
            "vms": sorted(label or "cell" for label in vm_timelines(cell["events"])),
            "attributed_seconds": seconds,
        }
    return {
        "run": name,
        "wall_seconds": round(wall, 1),
        "load_at_start": round(load, 2),
        "cells": cells,
        "report": str(report),
    }


def _restores(cell: dict[str, Any]) -> list[dict[str, float]]:
    """Each VM of the cell that started from a memory layer: its copy and restore seconds."""
    return [
        {
            "copy_seconds": float(e["data"]["copy_seconds"]),
            "restore_seconds": float(e["data"]["restore_seconds"]),
        }
        for e in cell["events"]
        if e["kind"] == "memory_restored" and "data" in e
    ]


def _bake(matrix: Path) -> float:
    from compatlab.matrix import find_project_root, load_matrix

    loaded = load_matrix(matrix, catalog_root=find_project_root(matrix.parent))
    return loaded.cells[0].scenario.bake if loaded.cells else 0.0


def hit_overhead(matrices: list[str], select_ids: set[str], trials: int) -> dict[str, Any]:
    """A cache hit without the VM: key, lookup and lock, overlay on the layer, firmware and TPM
    state copied -- what a warm cell does before its domain is defined."""
    from compatlab.lab.connection import DEFAULT_URI, Hypervisor
    from compatlab.lab.storage import DEFAULT_ROOT, CellStorage
    from compatlab.matrix import find_project_root, load_matrix
    from compatlab.run import LabSettings
    from compatlab.scenario import layers

    store = LabSettings().layer_store()
    assert store is not None
    cells = [
        c
        for m in matrices
        for c in load_matrix(
            Path(ROOT / m), catalog_root=find_project_root((ROOT / m).parent)
        ).cells
        if f"{Path(m).name}::{c.id}" in select_ids
    ]
    timings: dict[str, list[float]] = {}
    with Hypervisor(DEFAULT_URI) as hypervisor:
        # What a run's LabContext gives key_for (a memory layer's key names the accelerator
        # and the domain template).
        lab = SimpleNamespace(
            layers=store,
            hypervisor=hypervisor,
            template_dir=ROOT / "configs" / "templates",
            accel=hypervisor.accelerator().domain_type,
        )
        for n in range(trials):
            for cell in cells:
                storage = CellStorage(f"bench-hit-{n}", cell.id, root=DEFAULT_ROOT, host="local")
                started = time.perf_counter()
                key, inputs = layers.key_for(cell, lab)  # type: ignore[arg-type]
                with store.use(key, inputs, _no_build) as layer:
                    storage.create()
                    layers.seed(cell, lab, storage, layer)  # type: ignore[arg-type]
                    took = time.perf_counter() - started
                timings.setdefault(cell.id, []).append(took)
                storage.remove()
                tpm = layers.swtpm_state(lab, storage)  # type: ignore[arg-type]
                if tpm is not None:
                    shutil.rmtree(tpm.parent, ignore_errors=True)
    every = [t for ts in timings.values() for t in ts]
    return {
        "what": "key (digests from their sidecars, the hypervisor's versions, the domain "
        "template's digest), lookup and shared lock, qemu-img overlay on the layer (with its "
        "checks of the golden image and the layer), UEFI variables and TPM state copied; no VM",
        "trials_per_cell": trials,
        "seconds": {
            "median": round(statistics.median(every), 3),
            "max": round(max(every), 3),
        },
        "per_cell_median": {k: round(statistics.median(v), 3) for k, v in timings.items()},
    }


def _no_build(folder: Path) -> float:
    raise SystemExit("hit_overhead: a layer is missing; the warm run should have left it")


def compare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdict, attribution and signature per cell must be the same in every run."""
    keys = ("verdict", "attribution", "signature")
    differ = {}
    for cell in runs[0]["cells"]:
        seen = {r["run"]: tuple(r["cells"][cell][k] for k in keys) for r in runs}
        if len(set(seen.values())) > 1:
            differ[cell] = seen
    return {"same_in_every_run": not differ, "differences": differ}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="select", default=DEFAULT_SELECT)
    parser.add_argument("--matrix", action="append", default=None)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    matrices = args.matrix or ["matrix/demo.yaml"]
    folder = Path(tempfile.mkdtemp(prefix="compatlab-cache-bench-"))
    lab = folder / "sequential-lab.yaml"
    lab.write_text(SEQUENTIAL_LAB)
    compatlab = [sys.executable, "-m", "compatlab.cli"]
    runs = [
        pytest_run(
            "sequential",
            matrices,
            args.select,
            folder,
            "--matrix-cache",
            "off",
            "--matrix-hosts",
            str(lab),
        ),
        pytest_run("scratch", matrices, args.select, folder, "--matrix-cache", "off"),
    ]
    subprocess.run([*compatlab, "cache", "prune", "--all"], cwd=ROOT, check=True)
    runs.append(pytest_run("cold", matrices, args.select, folder))
    runs.append(pytest_run("warm", matrices, args.select, folder))
    by = {r["run"]: r for r in runs}
    hit = hit_overhead(matrices, set(by["warm"]["cells"]), args.trials)
    restores = [r for c in by["warm"]["cells"].values() for r in c["restores"]]
    copy_restore = [r["copy_seconds"] + r["restore_seconds"] for r in restores]
    hit["hit_with_restore"] = {
        "what": "the hit without a VM (median), plus a memory layer's copy under the cell's name "
        "and libvirt's restore, per VM of the warm run that restored one",
        "restores": len(restores),
        "copy_seconds_median": (
            round(statistics.median(r["copy_seconds"] for r in restores), 3) if restores else None
        ),
        "restore_seconds_median": (
            round(statistics.median(r["restore_seconds"] for r in restores), 3)
            if restores
            else None
        ),
        "seconds": {
            "median": round(hit["seconds"]["median"] + statistics.median(copy_restore), 3),
            "max": round(hit["seconds"]["median"] + max(copy_restore), 3),
        }
        if restores
        else hit["seconds"],
    }

    # Per pass cell (a pass in both runs): its warm seconds over its scratch seconds.
    shares = [
        cell["seconds"] / by["scratch"]["cells"][name]["seconds"]
        for name, cell in by["warm"]["cells"].items()
        if cell["verdict"] == "pass" and by["scratch"]["cells"][name]["verdict"] == "pass"
    ]
    ratio = statistics.median(shares) if shares else None
    speedup = by["sequential"]["wall_seconds"] / by["warm"]["wall_seconds"]
    before = {
        run: statistics.median(
            c["before_install_seconds"]
            for c in by[run]["cells"].values()
            if c["before_install_seconds"] is not None
        )
        for run in ("scratch", "cold", "warm")
    }
    result = {
        "benchmark": "cache",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "matrices": matrices,
        "select": args.select,
        "same_outcomes": compare(runs),
        "before_install_median_seconds": {k: round(v, 1) for k, v in before.items()},
        "hit_overhead": hit,
        "targets": {
            "warm_pass_cell_share_of_scratch": {
                "target": "<= 0.65",
                "measured": round(ratio, 3) if ratio is not None else None,
                "met": ratio is not None and ratio <= 0.65,
            },
            "warm_demo_speedup_over_sequential_scratch": {
                "target": ">= 3.0",
                "measured": round(speedup, 2),
                "met": speedup >= 3.0,
            },
            "hit_overhead_seconds": {
                "target": "< 0.5 (lookup, layer chain, restore)",
                "measured": hit["hit_with_restore"]["seconds"]["median"],
                "met": hit["hit_with_restore"]["seconds"]["max"] < 0.5,
            },
        },
        "runs": runs,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    for r in runs:
        print(f"{r['run']}: {len(r['cells'])} cells in {r['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
