"""Serial-log benchmark: memory and time to find the panic after a flooded console (issue 8).

Run as ``.venv/bin/python benchmarks/serial_memory.py [--mib 300]``. Writes
``benchmarks/results/serial_memory.json`` and prints a short table.

A guest floods its serial console (``--mib`` MiB of printk lines), then panics. At the crash the
runner reads the crash code from the log. Two readers, each in its own fresh process so peak RSS
means something, side by side in one run:

- ``before``: what ``CellEvidence.bugcheck`` did at commit ``BEFORE`` -- read the log from the
  boot's offset whole, decode it, split it, parse it (the parser of that commit, loaded from git);
- ``after``: ``CellEvidence.linux_panic`` -- the log read as a stream, its last window only.

The figure is the growth of the process's peak RSS (``ru_maxrss``) over what the imports took,
and the wall time of the call. Not an assertion: the unit test checks the bound with tracemalloc.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

RESULTS = ROOT / "benchmarks" / "results" / "serial_memory.json"
BEFORE = "c62af8a"  # the last commit with the whole-log reader
MiB = 1024 * 1024
FLOOD = b"[  100.000000] acme-av: scanning /usr/lib/x86_64-linux-gnu/libfoo.so again\n"
OOPS = b"[  811.900000] BUG: unable to handle page fault for address: ffff888000000000\n"
PANIC = b"[  812.000001] Kernel panic - not syncing: Fatal exception in interrupt\n"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _before_reader() -> Any:
    """The old parser, from git: the same code the runner ran before this change."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE}:src/compatlab/bugcheck.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("bugcheck_before")
    exec(compile(source, "bugcheck_before.py", "exec"), module.__dict__)

    def read(path: Path, offset: int) -> object:
        # CellEvidence.serial_text + bugcheck at BEFORE.
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
        return module.parse_linux_panic(text)

    return read


def _after_reader() -> Any:
    from compatlab.lab.evidence import CellEvidence
    from compatlab.lab.machine import Machine
    from compatlab.lab.storage import CellStorage

    def read(path: Path, offset: int) -> object:
        storage = CellStorage("bench", "cell", root=path.parent)
        evidence = CellEvidence(storage, cast(Machine, None), path.parent, path.parent)
        # The storage's serial log path is fixed; point it at the generated file.
        storage_log = storage.serial_log
        storage_log.parent.mkdir(parents=True, exist_ok=True)
        if not storage_log.exists():
            os.symlink(path, storage_log)
        return evidence.linux_panic(offset)

    return read


def child(variant: str, path: Path) -> None:
    reader = _before_reader() if variant == "before" else _after_reader()
    base = _peak_mib()
    start = time.perf_counter()
    found = reader(path, 0)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "peak_rss_mib": round(_peak_mib(), 1),
                "rss_growth_mib": round(_peak_mib() - base, 1),
                "seconds": round(seconds, 3),
                "found": str(getattr(found, "name", None)),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=300, help="size of the flooded log")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory(prefix="compatlab-serial-") as tmp:
        log = Path(tmp) / "serial.log"
        block = FLOOD * (MiB // len(FLOOD))
        with log.open("wb") as out:
            for _ in range(args.mib):
                out.write(block)
            out.write(OOPS + PANIC)
        size = log.stat().st_size
        runs: dict[str, Any] = {}
        for variant in ("before", "after"):
            answer = subprocess.run(
                [sys.executable, __file__, "--child", variant, str(log)],
                check=True,
                capture_output=True,
                text=True,
            )
            runs[variant] = json.loads(answer.stdout)
    report = {
        "schema": 1,
        "measured": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "log_mib": round(size / MiB, 1),
        "before_commit": BEFORE,
        "before": runs["before"],
        "after": runs["after"],
        "what": "peak RSS growth of a fresh process reading the crash code from a flooded "
        "serial log (offset 0: the boot's whole output), and the call's wall time",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"serial log of {report['log_mib']} MiB, panic at its end")
    for variant in ("before", "after"):
        r = runs[variant]
        print(
            f"  {variant:<6} RSS +{r['rss_growth_mib']:>7.1f} MiB  {r['seconds']:>6.3f} s  "
            f"{r['found']}"
        )
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
