"""The run history (``reports/history.sqlite``): the pure classification of what changed, and
the SQLite store -- two runs, flaky and fixed cells, recording a run twice, writers at once.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from compatlab.errors import StorageError
from compatlab.model import Bugcheck, CellResult, Repeat, Verdict
from compatlab.report import RunInfo, load_history, render_report, write_results
from compatlab.report.changes import (
    TREND_RUNS,
    Change,
    Outcome,
    classify,
    same_candidate,
    trend,
)
from compatlab.report.history import SCHEMA_VERSION, History, default_history
from tests.support.cells import crashed_cell, run_info

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
SENSOR_1 = ("sensor", "1.0", "aa" * 32)
SENSOR_2 = ("sensor", "2.0", "bb" * 32)


def _o(
    verdict: Verdict, candidate: tuple[str, str, str] = SENSOR_1, n: int = 0, **kw: Any
) -> Outcome:
    return Outcome(f"r{n}", (T0 + timedelta(days=n)).isoformat(), verdict, candidate, **kw)


# -- classification (pure) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "before", "expected"),
    [
        (_o(Verdict.CRASH, SENSOR_2), [_o(Verdict.PASS)], Change.NEW_FAILURE),
        (_o(Verdict.PASS, SENSOR_2), [_o(Verdict.BOOT_LOOP)], Change.FIXED),
        (_o(Verdict.BOOT_LOOP, SENSOR_2), [_o(Verdict.CRASH)], Change.STILL_FAILING),
        (_o(Verdict.PASS, SENSOR_2), [_o(Verdict.PASS)], Change.STILL_PASSING),
        # the same candidate, pass <-> fail: the cell is flaky, not fixed or broken
        (_o(Verdict.PASS), [_o(Verdict.CRASH)], Change.FLAKY),
        (_o(Verdict.HANG), [_o(Verdict.PASS)], Change.FLAKY),
        (_o(Verdict.CRASH), [], Change.NEW_CELL),
        (_o(Verdict.INFRA_ERROR), [_o(Verdict.PASS)], Change.NO_VERDICT),
        # a run the lab failed is no verdict: the one before it is compared
        (
            _o(Verdict.CRASH, SENSOR_2),
            [_o(Verdict.INFRA_ERROR), _o(Verdict.PASS)],
            Change.NEW_FAILURE,
        ),
        (_o(Verdict.CRASH), [_o(Verdict.INFRA_ERROR)], Change.NEW_CELL),
        # repeats that disagree are flaky whatever came before
        (
            _o(Verdict.CRASH, SENSOR_2, failed_repeats=1, repeats=5),
            [_o(Verdict.CRASH)],
            Change.FLAKY,
        ),
        (
            _o(Verdict.CRASH, SENSOR_2, failed_repeats=5, repeats=5),
            [_o(Verdict.CRASH)],
            Change.STILL_FAILING,
        ),
    ],
)
def test_classify(now: Outcome, before: list[Outcome], expected: Change) -> None:
    change, previous = classify(now, before)
    assert change is expected
    judged = [o for o in before if o.verdict is not Verdict.INFRA_ERROR]
    assert previous == (judged[0] if judged else None)


def test_a_candidate_is_the_same_by_name_version_and_checksum() -> None:
    assert same_candidate(SENSOR_1, SENSOR_1)
    assert not same_candidate(SENSOR_1, ("sensor", "1.0", "cc" * 32))  # rebuilt under one version
    assert not same_candidate(SENSOR_1, SENSOR_2)
    # a run from before checksums were recorded: name and version decide
    assert same_candidate(SENSOR_1, ("sensor", "1.0", ""))


def test_trend_keeps_the_last_runs_oldest_first() -> None:
    earlier = [_o(Verdict.PASS, n=-i) for i in range(1, 30)]  # newest first
    now = _o(Verdict.CRASH)
    strip = trend(now, earlier)
    assert len(strip) == TREND_RUNS and strip[-1] is now
    assert [o.run_id for o in strip[:-1]] == [f"r{-i}" for i in range(TREND_RUNS - 1, 0, -1)]


# -- the store ------------------------------------------------------------------------------------


def _run(n: int, candidate: tuple[str, str, str] = SENSOR_1, **kw: Any) -> RunInfo:
    name, version, sha = candidate
    return run_info(
        id=f"run-{n}",
        started=T0 + timedelta(hours=n),
        candidate_name=name,
        candidate_version=version,
        candidate_sha256=sha,
        **kw,
    )


def _cell(cell_id: str, verdict: Verdict, signature: str = "", **kw: Any) -> CellResult:
    bugcheck = Bugcheck("panic", "Kernel panic", signature=signature) if signature else None
    return crashed_cell(cell_id, verdict=verdict, bugcheck=bugcheck, **kw)


NULL = "BUG: kernel NULL pointer dereference in acme_apply [acme_sensor]"


def test_two_runs_of_a_matrix(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    first = [
        _cell("a/hw/none", Verdict.PASS),
        _cell("a/hw/edr", Verdict.BOOT_LOOP, NULL),
        _cell("b/hw/edr", Verdict.PASS),
        _cell("b/hw/av", Verdict.CRASH, NULL),
    ]
    second = [
        _cell("a/hw/none", Verdict.CRASH, "BUG: soft lockup in acme_scan [acme_sensor]"),
        _cell("a/hw/edr", Verdict.BOOT_LOOP, NULL),
        _cell("b/hw/edr", Verdict.PASS),
        _cell("b/hw/av", Verdict.PASS),
        _cell("c/hw/none", Verdict.PASS),
    ]
    with History(path) as store:
        store.record(_run(1), first)
        view = store.view(_run(1), first)
        assert view.previous_run is None and "first run" in view.note
        assert {h.change for h in view.cells.values()} == {Change.NEW_CELL}

        store.record(_run(2, SENSOR_2), second)
        view = store.view(_run(2, SENSOR_2), second)
    changes = {cell_id: h.change for (_, cell_id), h in view.cells.items()}
    assert changes == {
        "a/hw/none": Change.NEW_FAILURE,
        "a/hw/edr": Change.STILL_FAILING,
        "b/hw/edr": Change.STILL_PASSING,
        "b/hw/av": Change.FIXED,
        "c/hw/none": Change.NEW_CELL,
    }
    assert view.previous_run == "run-1"
    edr = view.of("matrix/demo.yaml", "a/hw/edr")
    assert edr is not None and [o.run_id for o in edr.trend] == ["run-1", "run-2"]
    assert edr.previous is not None and edr.previous.candidate == SENSOR_1
    # per signature: first and last seen, cells ever
    null = view.signatures[NULL]
    assert (null.first_run, null.last_run, null.cells, null.runs) == ("run-1", "run-2", 2, 2)
    assert not null.new_in("run-2")
    lockup = view.signatures["BUG: soft lockup in acme_scan [acme_sensor]"]
    assert lockup.new_in("run-2") and lockup.cells == 1


def test_same_candidate_flipping_is_flaky(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as store:
        store.record(_run(1), [_cell("a/hw/none", Verdict.PASS)])
        now = [_cell("a/hw/none", Verdict.HANG)]
        store.record(_run(2), now)
        view = store.view(_run(2), now)
    assert view.counts() == [(Change.FLAKY, 1)]


def test_other_matrix_files_are_another_history(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as store:
        store.record(_run(1), [_cell("a/hw/none", Verdict.PASS)])
        other = _run(2, matrix=("matrix/nightly.yaml",))
        cells = [_cell("a/hw/none", Verdict.CRASH)]
        store.record(other, cells)
        view = store.view(other, cells)
    assert view.previous_run is None
    assert view.counts() == [(Change.NEW_CELL, 1)]


def test_recording_a_run_again_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with History(path) as store:
        store.record(_run(1), [_cell("a/hw/none", Verdict.PASS)])
        cells = [_cell("a/hw/none", Verdict.CRASH, NULL)]
        for _ in range(3):
            store.record(_run(2, SENSOR_2), cells)
        # a resumed run finishing: the same id, more cells, one changed
        cells = [_cell("a/hw/none", Verdict.BOOT_LOOP, NULL), _cell("b/hw/none", Verdict.PASS)]
        store.record(_run(2, SENSOR_2), cells)
        view = store.view(_run(2, SENSOR_2), cells)
        assert store.runs() == ["run-1", "run-2"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM cells WHERE run_id = 'run-2'").fetchone() == (2,)
        assert db.execute("SELECT COUNT(*) FROM crashes").fetchone() == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert view.signatures[NULL].runs == 1
    assert [o.verdict for o in view.cells[("matrix/demo.yaml", "a/hw/none")].trend] == [
        Verdict.PASS,
        Verdict.BOOT_LOOP,
    ]


def test_rerendering_an_old_run_compares_it_with_its_own_past(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as store:
        for n, verdict in enumerate([Verdict.PASS, Verdict.CRASH, Verdict.PASS], start=1):
            store.record(_run(n, ("sensor", str(n), "")), [_cell("a/hw/none", verdict)])
        again = [_cell("a/hw/none", Verdict.CRASH)]
        view = store.view(_run(2, ("sensor", "2", "")), again)
    assert view.previous_run == "run-1"
    assert view.counts() == [(Change.NEW_FAILURE, 1)]


def test_repeats_are_kept_and_their_signatures_counted(tmp_path: Path) -> None:
    repeats = [
        Repeat(Verdict.PASS, seconds=40),
        Repeat(Verdict.CRASH, seconds=12, signature=NULL),
        Repeat(Verdict.INFRA_ERROR),
        Repeat(Verdict.PASS, seconds=41),
    ]
    cells = [_cell("a/hw/none", Verdict.CRASH, NULL, repeats=repeats)]
    with History(tmp_path / "h.sqlite") as store:
        store.record(_run(1), cells)
        view = store.view(_run(1), cells)
    history = view.cells[("matrix/demo.yaml", "a/hw/none")]
    assert history.change is Change.FLAKY
    assert (history.trend[-1].failed_repeats, history.trend[-1].repeats) == (1, 3)


_WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from compatlab.model import Verdict
    from compatlab.report.history import History
    from tests.support.cells import crashed_cell, run_info

    path, n = Path(sys.argv[1]), int(sys.argv[2])
    cells = [crashed_cell(f"b{n}/hw/p{i}", verdict=Verdict.PASS) for i in range(300)]
    run = run_info(id=f"run-{n}", started=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=n))
    for _ in range(5):  # and again: every record is one whole transaction
        with History(path, timeout=120) as store:
            store.record(run, cells)
            store.view(run, cells)
    """
)


def test_runs_finishing_at_once_are_all_recorded(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    root = Path(__file__).resolve().parents[2]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(n)],
            cwd=root,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (4,)
        assert db.execute("SELECT COUNT(*) FROM cells").fetchone() == (4 * 300,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_history_from_a_newer_compatlab_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StorageError, match="newer"), History(path) as store:
        store.record(_run(1), [])


def test_a_broken_history_costs_only_the_history_section(tmp_path: Path) -> None:
    run_dir = tmp_path / "reports" / "run-1"
    write_results(run_dir, _run(1), [_cell("a/hw/none", Verdict.CRASH, NULL)])
    default_history(run_dir).write_bytes(b"this is not a database" * 100)
    index = render_report(run_dir)
    assert "history unavailable" in index.read_text()
    assert "file is not a database" in index.read_text()


def test_the_report_records_into_reports_history(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    for n, verdict in enumerate([Verdict.PASS, Verdict.CRASH], start=1):
        write_results(
            reports / f"run-{n}",
            _run(n, ("sensor", str(n), "")),
            [_cell("a/hw/none", verdict, NULL if n == 2 else "")],
        )
    render_report(reports / "run-1")
    index = render_report(reports / "run-2")
    render_report(reports / "run-2")  # again: still two runs
    assert default_history(reports / "run-2") == (reports / "history.sqlite").resolve()
    with History(reports / "history.sqlite") as store:
        assert store.runs() == ["run-1", "run-2"]
    html = index.read_text()
    assert "new failure: 1" in html and "compared with run" in html
    view = load_history(reports / "run-2", _run(2, ("sensor", "2", "")), [], False)
    assert not view.available and "no history" in view.note
