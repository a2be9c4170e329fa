"""How long cells took in earlier runs: the I/O behind :mod:`compatlab.engine.order`.

The times are in the earlier runs' ``results.json`` (each cell's ``seconds``, and each repeat's
under ``--matrix-repeat``), in the run folders beside this run's -- ``reports/<run-id>/``, the
folder that also holds ``history.sqlite``, which keeps verdicts but not times. The newest
:data:`RUNS` of them that have times are read (by when they were last written). A cell that ended
``infra_error`` says how long the lab took to fail, not how long the cell takes: left out.

An expectation only orders the cells, so nothing here may stop a run: a folder or file that
cannot be read, or is not a results.json, is passed over (logged at debug level).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from compatlab.engine.order import PastCell, expected_seconds
from compatlab.errors import InputError
from compatlab.files import MAX_RESULTS_BYTES, read_text

if TYPE_CHECKING:
    from compatlab.matrix import Cell

__all__ = ["RUNS", "earlier_expectations", "past_cells"]

log = logging.getLogger("compatlab.engine")

#: How many earlier runs are read (the newest).
RUNS = 5
_RESULTS = "results.json"  # compatlab.report.RESULTS_FILE, without importing the report
_LAB_FAILED = "infra_error"


def earlier_expectations(
    cells: Sequence[Cell], runs_dir: Path, *, this_run: Path | None = None
) -> dict[tuple[str, str], float]:
    """Each cell's expected seconds from the runs in ``runs_dir`` other than ``this_run``."""
    return expected_seconds(cells, past_cells(runs_dir, this_run=this_run))


def past_cells(runs_dir: Path, *, this_run: Path | None = None, runs: int = RUNS) -> list[PastCell]:
    """The cells' times in the newest ``runs`` earlier runs under ``runs_dir``, newest first."""
    found = []
    skip = this_run.resolve() if this_run is not None else None
    try:
        for results in runs_dir.glob(f"*/{_RESULTS}"):
            try:
                if skip is not None and results.parent.resolve() == skip:
                    continue
                found.append((results.stat().st_mtime, results))
            except OSError:
                continue
    except OSError as exc:
        log.debug("compatlab: earlier runs in %s: %s", runs_dir, exc)
        return []
    past: list[PastCell] = []
    read = 0
    for _, results in sorted(found, reverse=True):
        times = _read(results)
        past.extend(times)
        read += bool(times)
        if read >= runs:
            break
    return past


def _read(results: Path) -> list[PastCell]:
    try:
        doc = json.loads(read_text(results, limit=MAX_RESULTS_BYTES, what="results file"))
    except (InputError, OSError, ValueError, RecursionError) as exc:
        log.debug("compatlab: %s passed over: %s", results, exc)
        return []
    cells = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list):
        return []
    return [past for cell in cells if isinstance(cell, dict) for past in _times(cell)]


def _times(cell: Mapping[str, object]) -> Iterator[PastCell]:
    names = [cell.get(k) for k in ("matrix", "id", "build", "hardware")]
    if not all(isinstance(n, str) for n in names):
        return
    matrix, cell_id, build, hardware = (str(n) for n in names)
    repeats = cell.get("repeats")
    runs = repeats if isinstance(repeats, list) and repeats else [cell]
    for run in runs:
        if not isinstance(run, dict) or run.get("verdict") == _LAB_FAILED:
            continue
        seconds = run.get("seconds")
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            yield PastCell(matrix, cell_id, build, hardware, float(seconds))
