"""Running ``pytest --matrix`` the way a developer does, for the real-VM tests, and reading what
it left: ``results.json``, evidence files, pages, and what is (not) left on the hypervisor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.lab import require_lab

ROOT = Path(__file__).resolve().parents[2]
STORAGE_ROOT = Path("/var/lib/compatlab")
SYSTEM_URI = "qemu:///system"
GOLDEN = STORAGE_ROOT / "images" / "tinylinux-a" / "disk.qcow2"
PAYLOADS = ROOT / "payloads" / "build"
RUN_TIMEOUT = 1500.0  # a hung runner must not hang the suite

# -- running the plugin ------------------------------------------------------------------------


@dataclass
class Run:
    """One ``pytest --matrix`` run and what it wrote."""

    report: Path
    returncode: int
    output: str
    seconds: float
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return str(self.results["run"]["id"])

    @property
    def matrices(self) -> list[str]:
        return list(self.results["run"]["matrix"])

    def cell(self, matrix: str, cell_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            c
            for c in self.results["cells"]
            if Path(c["matrix"]).name == Path(matrix).name and c["id"] == cell_id
        ]
        assert len(found) == 1, f"{matrix}::{cell_id} not in results.json:\n{self.output[-3000:]}"
        return found[0]

    def artifact(self, cell: dict[str, Any], name: str) -> Path:
        assert name in cell["artifacts"], f"no {name} among {sorted(cell['artifacts'])}"
        path: Path = self.report / str(cell["artifacts"][name])
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"
        return path

    def serial(self, cell: dict[str, Any]) -> str:
        return self.artifact(cell, "serial_log").read_text(errors="replace")

    def page(self, cell: dict[str, Any]) -> str:
        """The cell's evidence page (cells/<slug>.html), as the report links it."""
        from compatlab.report import cell_from_json
        from compatlab.report.html import cell_slug

        slug = cell_slug(cell_from_json(cell), qualify=len(self.matrices) > 1)
        page = self.report / "cells" / f"{slug}.html"
        assert page.is_file(), f"no evidence page {page}"
        assert f'href="cells/{slug}.html"' in (self.report / "index.html").read_text()
        return page.read_text()


def environment() -> dict[str, str]:
    # Nothing of an outer pytest (xdist worker ids, addopts) leaks into the inner run.
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}


def pytest_command(report: Path, *args: str) -> list[str]:
    """The command line of a run. Cells start from their golden image (``--matrix-cache off``)
    unless ``args`` say otherwise: what a test injects a fault into is the cell's own VM, not
    a layer's builder; the cached path has tests of its own (unit: test_layer_cells.py; real
    guests: test_fault_phases.py's cached runs)."""
    cache = () if any(a.startswith("--matrix-cache") for a in args) else ("--matrix-cache", "off")
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--matrix-report",
        str(report),
        *cache,
        *args,
    ]


def finish(report: Path, returncode: int, output: str, started: float) -> Run:
    run = Run(report, returncode, output, time.monotonic() - started)
    results = report / "results.json"
    assert results.is_file(), f"no results.json (exit {returncode}):\n{output[-5000:]}"
    run.results = json.loads(results.read_text())
    return run


def run_matrices(report: Path, *args: str) -> Run:
    started = time.monotonic()
    proc = subprocess.run(
        pytest_command(report, *args),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return finish(report, proc.returncode, proc.stdout + proc.stderr, started)


# -- what a run must leave behind: nothing ------------------------------------------------------


def leftover_domains(uri: str, run_id: str) -> list[str]:
    """Domains on ``uri`` whose compatlab metadata names this run (any worker's storage id)."""
    import libvirt

    from compatlab.lab.owner import read_cell_metadata

    conn = libvirt.open(uri)
    try:
        left = []
        for dom in conn.listAllDomains(0):
            try:
                meta = read_cell_metadata(dom)
            except Exception:  # gone while listing: someone else's, and not left over
                continue
            if meta is not None and (meta.run == run_id or meta.run.startswith(f"{run_id}.")):
                left.append(dom.name())
        return left
    finally:
        conn.close()


def leftover_folders(run_id: str) -> list[Path]:
    return sorted((STORAGE_ROOT / "cells").glob(f"{run_id}*"))


def assert_nothing_left(run: Run, uri: str = SYSTEM_URI) -> None:
    assert leftover_domains(uri, run.run_id) == []
    assert leftover_folders(run.run_id) == []


def events(cell: dict[str, Any], kind: str, *, rerun: bool = False) -> list[dict[str, Any]]:
    """The cell's events of ``kind``: the deciding VM's (their sources carry no VM label), or
    (``rerun``) its reruns'. Each VM has its own clock: never mix two VMs' events."""
    if rerun:
        return [e for e in cell["events"] if e["kind"] == kind and e["source"].startswith("rerun-")]
    return [e for e in cell["events"] if e["kind"] == kind and "/" not in e["source"]]


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def require_demo_lab(payloads: Iterable[str]) -> None:
    """The demo image, these built payloads and libvirtd: else require_lab says what is missing."""
    import libvirt

    if not GOLDEN.is_file():
        require_lab(f"no demo image {GOLDEN} (make images)")
    for payload in payloads:
        if not (PAYLOADS / payload).is_dir():
            require_lab(f"no {PAYLOADS / payload} (payloads/build.sh)")
    try:
        libvirt.open(SYSTEM_URI).close()
    except libvirt.libvirtError as exc:
        require_lab(f"no libvirtd at {SYSTEM_URI}: {exc}")
