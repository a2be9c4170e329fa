"""Small results for report tests: a run and a crashed cell, with any field changed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from compatlab.model import Boot, Bugcheck, CellResult, Event, Verdict
from compatlab.report import RunInfo

MATRIX = "matrix/demo.yaml"


def run_info(**changes: Any) -> RunInfo:
    """A finished run of ``MATRIX``; ``changes`` override fields (``finished=None``: running)."""
    values: dict[str, Any] = {
        "id": "20240719-0409",
        "matrix": (MATRIX,),
        "candidate_name": "sensor-content",
        "candidate_version": "291",
        "started": datetime(2024, 7, 19, 4, 9, tzinfo=UTC),
        "finished": datetime(2024, 7, 19, 5, 27, tzinfo=UTC),
        "hosts": ("qemu:///system",),
    }
    values.update(changes)
    return RunInfo(**values)


def crashed_cell(cell_id: str = "demo/bios-1cpu/acme-av", **changes: Any) -> CellResult:
    """A cell of ``MATRIX`` that crashed with a Linux panic; ``changes`` set any field."""
    build, hardware, products = cell_id.split("/", 2)
    cell = CellResult(
        id=cell_id,
        build=build,
        hardware=hardware,
        products=tuple(products.split("+")),
        verdict=Verdict.CRASH,
        matrix=MATRIX,
        seconds=48.2,
        reason="crash: bugcheck panic",
        bugcheck=Bugcheck("panic", "Kernel panic - not syncing: boom"),
        boots=[Boot(1, "crash", 7.4, "boots")],
        events=[Event(12.01, "libvirt", "crashed", "panicked")],
    )
    for key, value in changes.items():
        setattr(cell, key, value)
    return cell
