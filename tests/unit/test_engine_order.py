"""Which cells the engine gets first, and how many at once (compatlab.engine.order), and the
earlier runs' times it is told (compatlab.engine.earlier). Pure, or files in tmp_path only.

The engine carrying them out -- Dask's ``priority=``, the window held -- is in test_engine.py.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from compatlab.capacity import Capacity
from compatlab.engine.earlier import earlier_expectations, past_cells
from compatlab.engine.order import (
    PastCell,
    Window,
    cell_key,
    expected_seconds,
    in_flight_limit,
    priority,
)
from compatlab.matrix import Cell
from compatlab.model import CellResult, Repeat, Verdict
from tests.unit.test_engine import cells


@pytest.fixture
def matrix_cells(tmp_path: Path) -> dict[str, Cell]:
    """lin/{bios-1cpu,uefi-2cpu}/{none,av,edr,dlp}, by id."""
    return {c.id: c for c in cells(tmp_path, hardware=("bios-1cpu", "uefi-2cpu"))}


def past(cell: Cell, *seconds: float, matrix: str | None = None) -> list[PastCell]:
    where = str(cell.matrix) if matrix is None else matrix
    return [PastCell(where, cell.id, cell.build, cell.hardware.name, s) for s in seconds]


# -- the expectation ----------------------------------------------------------------------------


def test_a_cell_is_expected_to_take_the_median_of_its_latest_times(
    matrix_cells: dict[str, Cell],
) -> None:
    cell = matrix_cells["lin/bios-1cpu/av"]
    # Newest first: the five latest count (100, 90, 300, 95, 105), not the older 1000s.
    history = past(cell, 100, 90, 300, 95, 105, 1000, 1000, 1000)
    assert expected_seconds([cell], history) == {cell_key(cell): 100}


def test_a_cell_never_seen_is_expected_to_take_what_similar_cells_took(
    matrix_cells: dict[str, Cell],
) -> None:
    bios_av, bios_edr = matrix_cells["lin/bios-1cpu/av"], matrix_cells["lin/bios-1cpu/edr"]
    uefi_av, uefi_dlp = matrix_cells["lin/uefi-2cpu/av"], matrix_cells["lin/uefi-2cpu/dlp"]
    history = [*past(bios_av, 100), *past(bios_edr, 140), *past(uefi_av, 300)]
    expected = expected_seconds(matrix_cells.values(), history)
    # Its own time first; the same image and hardware next (median of 100 and 140).
    assert expected[cell_key(bios_av)] == 100
    assert expected[cell_key(matrix_cells["lin/bios-1cpu/none"])] == 120
    assert expected[cell_key(uefi_dlp)] == 300
    # The same cell id under another matrix file beats similar cells.
    moved = past(uefi_dlp, 50, matrix="/elsewhere/m.yaml")
    assert expected_seconds([uefi_dlp], [*history, *moved])[cell_key(uefi_dlp)] == 50
    # Nothing similar known: the median of all known cells.
    assert expected_seconds([uefi_dlp], past(bios_av, 100)) == {cell_key(uefi_dlp): 100}


def test_no_earlier_run_means_no_expectation_and_item_order(
    matrix_cells: dict[str, Cell],
) -> None:
    useless = past(matrix_cells["lin/bios-1cpu/av"], 0, float("nan"), -3)
    assert expected_seconds(matrix_cells.values(), []) == {}
    assert expected_seconds(matrix_cells.values(), useless) == {}
    assert priority(None) == 0


def test_longer_expected_cells_get_a_higher_dask_priority() -> None:
    # Dask runs the higher priority first.
    assert priority(252.1) > priority(140.4) > priority(89.2) > priority(None)
    assert priority(float("inf")) == 0


# -- how many at once ---------------------------------------------------------------------------


def test_the_window_is_a_multiple_of_the_mean_cells_that_fit() -> None:
    host = Capacity(vcpus=8, memory_mib=64 * 1024).resources()
    # 8 cells of 1 vCPU / 1 GiB fit: 1.25 x 8 = 10.
    assert in_flight_limit([host], 1, 1024, 1.25) == 10
    # Memory runs out first on this host: 2 cells of 16 GiB, on the other 8 vCPUs / 2 = 4.
    poor = Capacity(vcpus=32, memory_mib=32 * 1024).resources()
    assert in_flight_limit([poor, host], 2, 16 * 1024, 1.0) == 2 + 4
    # Never nothing, even with no worker yet.
    assert in_flight_limit([], 2, 1024) == 1


def test_the_window_hands_over_longest_first_and_never_more_than_its_limit() -> None:
    window: Window[str] = Window(limit=2)
    for name, seconds in [("a", 10), ("b", 40), ("c", 20), ("d", 40), ("e", 0)]:
        window.hold(name, seconds)
    assert window.due() == ["b", "d"]  # equal priorities keep the order they came in
    assert window.due() == []  # two out: full
    window.done()
    assert window.due() == ["c"]
    window.add()  # a lost cell's next attempt, handed over outside the queue: it counts
    window.done()
    assert window.due() == []
    window.limit = 4
    assert window.due() == ["a", "e"]
    assert (window.out, window.held) == (4, 0)


def test_the_window_counts_right_when_attempts_end_on_another_thread() -> None:
    window: Window[int] = Window(limit=3)
    for n in range(300):
        window.hold(n)
    handed: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for item in window.due():
            with lock:
                handed.append(item)

    take()
    threads = []
    for _ in range(300):
        window.done()
        threads.append(threading.Thread(target=take))
        threads[-1].start()
    for thread in threads:
        thread.join()
    assert sorted(handed) == list(range(300))  # each exactly once
    assert window.out <= 3


# -- earlier runs' times (files) -----------------------------------------------------------------


def write_run(folder: Path, results: list[CellResult], age: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    path = folder / "results.json"
    path.write_text(json.dumps({"schema": 1, "cells": [r.as_json() for r in results]}))
    when = path.stat().st_mtime - age
    os.utime(path, (when, when))
    return path


def result(cell: Cell, seconds: float, verdict: Verdict = Verdict.PASS) -> CellResult:
    return CellResult(
        id=cell.id,
        build=cell.build,
        hardware=cell.hardware.name,
        products=cell.product_names,
        verdict=verdict,
        seconds=seconds,
        matrix=str(cell.matrix),
    )


def test_earlier_runs_beside_this_one_give_the_times_newest_first(
    tmp_path: Path, matrix_cells: dict[str, Cell]
) -> None:
    cell = matrix_cells["lin/bios-1cpu/av"]
    reports = tmp_path / "reports"
    write_run(reports / "old", [result(cell, 300)], age=100)
    write_run(reports / "new", [result(cell, 100)], age=10)
    # A lab failure's time is the lab's, not the cell's.
    write_run(reports / "failed", [result(cell, 5, Verdict.INFRA_ERROR)], age=5)
    write_run(reports / "this-run", [result(cell, 7)])  # the run being resumed: not earlier
    (reports / "broken").mkdir()
    (reports / "broken" / "results.json").write_text("{not json")
    (reports / "history.sqlite").write_bytes(b"")
    times = past_cells(reports, this_run=reports / "this-run")
    assert [p.seconds for p in times] == [100, 300]
    assert past_cells(reports, this_run=reports / "this-run", runs=1)[0].seconds == 100
    expected = earlier_expectations([cell], reports, this_run=reports / "this-run")
    assert expected == {cell_key(cell): 200}


def test_each_repeat_of_a_cell_is_one_time(tmp_path: Path, matrix_cells: dict[str, Cell]) -> None:
    cell = matrix_cells["lin/bios-1cpu/av"]
    repeated = result(cell, 390)  # the sum of its runs
    repeated.repeats = [
        Repeat(Verdict.PASS, None, 120.0),
        Repeat(Verdict.INFRA_ERROR, None, 30.0),
        Repeat(Verdict.PASS, None, 140.0),
    ]
    write_run(tmp_path / "reports" / "run", [repeated])
    assert [p.seconds for p in past_cells(tmp_path / "reports")] == [120, 140]


def test_no_reports_folder_is_no_history(tmp_path: Path, matrix_cells: dict[str, Cell]) -> None:
    assert earlier_expectations(list(matrix_cells.values()), tmp_path / "missing") == {}
