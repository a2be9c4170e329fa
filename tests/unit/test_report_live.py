"""The report as a run writes it: each cell's evidence page when the cell is reported, index.html
and junit.xml at the end (:class:`compatlab.report.LiveReport`, wired into ``ReportSink``) --
and ``compatlab report`` writing the same pages again, byte for byte, on several processes.

On the recorded runs (``tests/support/recorded``) plus a hostile cell, with a history of
earlier runs, so the pages carry a trend and a change.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from compatlab.cli import main
from compatlab.errors import StorageError
from compatlab.model import CellResult, Verdict
from compatlab.report import (
    INDEX_FILE,
    JUNIT_FILE,
    History,
    LiveReport,
    RunInfo,
    render_report,
    write_results,
)
from compatlab.report import pages as pages_module
from compatlab.report.index import CHANGED_ROWS, INDEX_REASON, changed
from compatlab.report.pages import PageNames, page_path
from compatlab.run import ReportSink
from compatlab.text import cut_mark
from tests.support.recorded_runs import hostile_cell, recorded_run

MATRIX = "matrix/demo.yaml"


def _earlier(history: Path, run: RunInfo, cells: list[CellResult], runs: int = 3) -> None:
    """``runs`` earlier runs of the same matrix files, every cell passing, another version."""
    with History(history) as store:
        for n in range(runs):
            store.record(
                replace(
                    run,
                    id=f"earlier-{n}",
                    started=run.started - timedelta(days=runs - n),
                    candidate_version=f"0.{n}",
                ),
                [replace(c, verdict=Verdict.PASS, bugcheck=None, attribution=None) for c in cells],
            )


@pytest.fixture
def run_cells(tmp_path: Path) -> tuple[Path, Path, RunInfo, list[CellResult]]:
    run_dir = tmp_path / "run"
    run, cells = recorded_run(run_dir)
    cells.append(hostile_cell(run_dir))
    run = replace(run, matrix=tuple(sorted({c.matrix for c in cells})))
    history = tmp_path / "history.sqlite"
    _earlier(history, run, cells)
    return run_dir, history, run, cells


def _pages(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "cells").glob("*.html"))}


def test_a_cell_s_page_exists_as_soon_as_the_cell_is_reported(
    run_cells: tuple[Path, Path, RunInfo, list[CellResult]],
) -> None:
    run_dir, history, run, cells = run_cells
    live = LiveReport(run_dir, run, history=history)
    for n, cell in enumerate(cells, start=1):
        path = live.add(cell)
        assert path is not None and path.is_file(), cell.id
        assert len(_pages(run_dir)) == n
        html = path.read_text()
        assert "compatlab" in html and "<h1" in html
        # Its history, read before the run is recorded: the earlier runs' trend and change.
        if cell.verdict.is_failure and cell.verdict is not Verdict.INFRA_ERROR:
            assert "new failure" in html, cell.id
    assert not (run_dir / INDEX_FILE).exists()  # the index waits for every cell
    live.close()


def test_the_run_s_pages_are_the_pages_compatlab_report_writes(
    run_cells: tuple[Path, Path, RunInfo, list[CellResult]], caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, history, run, cells = run_cells
    live = LiveReport(run_dir, run, history=history)
    for cell in cells:
        live.add(cell)
    finished = replace(run, finished=run.started + timedelta(minutes=30))
    write_results(run_dir, finished, cells)
    with caplog.at_level(logging.DEBUG, logger="compatlab.report"):
        index = live.finish(finished, cells)
    assert "compatlab: 0 evidence pages" in caplog.text  # the end wrote none of them again
    written = _pages(run_dir)
    first_index, first_junit = index.read_bytes(), (run_dir / JUNIT_FILE).read_bytes()
    assert len(written) == len(cells)

    for page in (run_dir / "cells").glob("*.html"):
        page.unlink()
    assert render_report(run_dir, history=history) == index
    assert _pages(run_dir) == written, "a re-rendered page differs from the run's"
    # The index and junit.xml too: the history read as the run went is the history read again.
    assert index.read_bytes() == first_index
    assert (run_dir / JUNIT_FILE).read_bytes() == first_junit


def test_pages_written_on_several_processes_are_the_same(
    run_cells: tuple[Path, Path, RunInfo, list[CellResult]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, history, run, cells = run_cells
    write_results(run_dir, run, cells)
    render_report(run_dir, history=history, processes=1)
    serial = _pages(run_dir)
    for page in (run_dir / "cells").glob("*.html"):
        page.unlink()
    monkeypatch.setattr(pages_module, "PARALLEL_PAGES", 2)
    monkeypatch.setattr(pages_module, "_CHUNK", 3)
    render_report(run_dir, history=history, processes=2)
    assert _pages(run_dir) == serial


def test_a_page_that_cannot_be_written_when_its_cell_ends_is_written_at_the_end(
    run_cells: tuple[Path, Path, RunInfo, list[CellResult]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_dir, history, run, cells = run_cells
    live = LiveReport(run_dir, run, history=history)
    unlucky = cells[1]
    real = live._cell_history

    def locked(cell: CellResult) -> object:
        if cell is unlucky:
            raise StorageError("history: database is locked")
        return real(cell)

    monkeypatch.setattr(live, "_cell_history", locked)
    assert [live.add(c) is None for c in cells].count(True) == 1
    assert "evidence page left for the end" in caplog.text
    name = PageNames(True).name(unlucky)
    assert not page_path(run_dir, name).exists()
    with caplog.at_level(logging.DEBUG, logger="compatlab.report"):
        live.finish(run, cells)
    assert "compatlab: 1 evidence pages" in caplog.text
    page = page_path(run_dir, name).read_text()
    assert "new failure" in page  # with its history, as a re-render writes it


def test_pages_written_under_another_header_are_written_again(
    run_cells: tuple[Path, Path, RunInfo, list[CellResult]], caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, history, run, cells = run_cells
    live = LiveReport(run_dir, run, history=history)
    for cell in cells:
        live.add(cell)
    other = replace(run, candidate_version="2.0")  # what the pages' header says changed
    with caplog.at_level(logging.DEBUG, logger="compatlab.report"):
        live.finish(other, cells)
    assert f"compatlab: {len(cells)} evidence pages" in caplog.text
    assert all("2.0" in p.decode() for p in _pages(run_dir).values())


def test_a_retried_cell_keeps_its_page_and_shows_its_last_result(tmp_path: Path) -> None:
    run, cells = recorded_run(tmp_path)
    live = LiveReport(tmp_path, run, history=False)
    first = live.add(cells[3])
    again = live.add(replace(cells[3], verdict=Verdict.CRASH, reason="crash: the retry"))
    assert first == again and first is not None
    assert "crash: the retry" in first.read_text()
    live.close()


def test_a_resumed_run_keeps_the_names_and_writes_the_earlier_cells_pages_at_the_end(
    tmp_path: Path,
) -> None:
    run, cells = recorded_run(tmp_path)
    run = replace(run, matrix=tuple(sorted({c.matrix for c in cells})))
    # Two ids that make the same page name: the one results.json holds first keeps it.
    twin = replace(cells[0], id=cells[0].id.replace("/", ":"))
    done, new = [cells[0]], [twin, *cells[1:3]]
    live = LiveReport(tmp_path, run, done=done, history=False)
    for cell in new:
        live.add(cell)
    first = live.names.name(cells[0])
    assert live.names.name(twin) == f"{first}-2"
    assert not page_path(tmp_path, first).exists()
    live.finish(run, [*done, *new])
    assert page_path(tmp_path, first).is_file()
    assert len(_pages(tmp_path)) == 4


def test_the_report_sink_writes_each_page_as_its_cell_is_added(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    report_dir = reports / "run-1"
    run, cells = recorded_run(report_dir)
    run = replace(run, started=datetime(2026, 11, 26, tzinfo=UTC))
    # The header names one matrix file, the cells come from three: at the end every page gets
    # its name with the matrix in it, and none is left under its first name.
    sink = ReportSink(report_dir, run, [], resume=False)
    for n, cell in enumerate(cells[:3], start=1):
        sink.add(cell)
        assert len(_pages(report_dir)) == n
    index = sink.finish()
    assert index == report_dir / INDEX_FILE
    assert (report_dir / JUNIT_FILE).is_file() and (reports / "history.sqlite").is_file()
    for page in (report_dir / "cells").glob("*.html"):
        assert f'href="cells/{page.name}"' in index.read_text()


# -- what the index holds of each cell -----------------------------------------------------------


def test_the_index_cuts_a_long_reason_that_the_cell_s_page_has_whole(tmp_path: Path) -> None:
    run, cells = recorded_run(tmp_path)
    long = "crash: " + "the installer said why " * 100
    cell = replace(cells[5], reason=long)
    run = replace(run, matrix=(cell.matrix,))
    live = LiveReport(tmp_path, run, history=False)
    page = live.add(cell)
    index = live.finish(run, [cell]).read_text()
    assert page is not None and long in page.read_text()
    assert long not in index and cut_mark(len(long) - INDEX_REASON) in index
    assert 'class="trend"' not in index.split('id="failing-cells"', 1)[1]


def test_since_the_last_run_lists_a_bounded_number_of_cells(
    run_cells: tuple[Path, Path, RunInfo, list[CellResult]],
) -> None:
    _, history, run, cells = run_cells
    with History(history) as store:
        store.record(run, cells)
        view = store.view(run, cells)
    hrefs = {id(c): f"cells/{n}.html" for n, c in enumerate(cells)}
    failing = [c for c in cells if c.verdict.is_failure and c.verdict is not Verdict.INFRA_ERROR]
    listed = changed(cells, hrefs, view, limit=2)
    assert len(listed.rows) == 2 and listed.more == len(failing) - 2
    assert all(len(r.trend) == 4 for r in listed.rows)  # three earlier runs and this one
    assert changed(cells, hrefs, view).more == 0 and CHANGED_ROWS >= 100


def test_compatlab_report_takes_the_number_of_page_writers(
    run_cells: tuple[Path, Path, RunInfo, list[CellResult]], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, history, run, cells = run_cells
    write_results(run_dir, run, cells)
    argv = ["report", str(run_dir), "--history", str(history)]
    assert main([*argv, "--jobs", "2"]) == 0
    assert len(_pages(run_dir)) == len(cells)
    with pytest.raises(SystemExit):
        main([*argv, "--jobs", "0"])
    assert "at least 1" in capsys.readouterr().err
