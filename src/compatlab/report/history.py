"""``reports/history.sqlite``: every run's verdicts, so a report can say what changed.

The store is SQLite (the embedded default: one file beside the run folders, nothing to run).
It keeps, per run, what was tested (matrix files, candidate name, version and payload checksum)
and per cell its verdict, its repeats' tally and its crash signatures -- not the evidence, which
stays in the run folders. What the numbers mean is :mod:`compatlab.report.changes`; this module
is only the I/O.

- Recording a run is idempotent: the run's rows are replaced, so rendering a report again (or a
  resumed run finishing) never counts a run twice.
- Two runs finishing at once are safe: WAL mode, and each record is one ``BEGIN IMMEDIATE``
  transaction that waits (``timeout`` seconds) for the other's to end.
- The schema has a version (``PRAGMA user_version``); a history written by a newer compatlab is
  refused rather than misread. SQLite's locks need a local file system, not NFS.

Every SQLite failure is a :class:`~compatlab.errors.StorageError` naming the file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from compatlab.errors import StorageError
from compatlab.model import CellResult, Verdict
from compatlab.report.changes import (
    TREND_RUNS,
    CellHistory,
    HistoryView,
    Outcome,
    SignatureSeen,
    build_view,
    classify,
    trend,
)
from compatlab.report.crashes import crash_signatures
from compatlab.report.document import RunInfo

__all__ = ["HISTORY_FILE", "SCHEMA_VERSION", "History", "default_history", "matrix_key"]

HISTORY_FILE = "history.sqlite"
SCHEMA_VERSION = 1
_VERDICTS = {v.value: v for v in Verdict}

_SCHEMA = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        matrix_key TEXT NOT NULL,          -- the run's matrix files, sorted, one per line
        started TEXT NOT NULL,             -- ISO-8601, as results.json has it
        started_ts REAL NOT NULL,          -- the same as a POSIX time, for ordering
        finished TEXT,
        candidate_name TEXT NOT NULL,
        candidate_version TEXT NOT NULL,
        candidate_sha256 TEXT NOT NULL,
        compatlab_version TEXT NOT NULL,
        recorded TEXT NOT NULL
    )""",
    "CREATE INDEX runs_by_matrix ON runs (matrix_key, started_ts, run_id)",
    """CREATE TABLE cells (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        matrix TEXT NOT NULL,
        cell_id TEXT NOT NULL,
        verdict TEXT NOT NULL,
        attribution TEXT,
        failed_repeats INTEGER NOT NULL,
        repeats INTEGER NOT NULL,
        fleet_share REAL,
        PRIMARY KEY (run_id, matrix, cell_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX cells_by_cell ON cells (matrix, cell_id)",
    """CREATE TABLE crashes (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        matrix TEXT NOT NULL,
        cell_id TEXT NOT NULL,
        signature TEXT NOT NULL,
        PRIMARY KEY (run_id, matrix, cell_id, signature)
    ) WITHOUT ROWID""",
    "CREATE INDEX crashes_by_signature ON crashes (signature)",
)

# A cell's earlier results in earlier runs of the same matrix files, newest first, at most
# TREND_RUNS - 1 per cell, for the cells of the run :id.
_EARLIER = """
WITH earlier AS (
    SELECT * FROM runs
    WHERE matrix_key = :key AND (started_ts < :ts OR (started_ts = :ts AND run_id < :id))
), ranked AS (
    SELECT c.matrix, c.cell_id, c.verdict, c.failed_repeats, c.repeats,
           e.run_id, e.started, e.candidate_name, e.candidate_version, e.candidate_sha256,
           ROW_NUMBER() OVER (
               PARTITION BY c.matrix, c.cell_id ORDER BY e.started_ts DESC, e.run_id DESC
           ) AS n
    FROM cells c JOIN earlier e ON c.run_id = e.run_id
    WHERE EXISTS (SELECT 1 FROM cells now
                  WHERE now.run_id = :id AND now.matrix = c.matrix AND now.cell_id = c.cell_id)
)
SELECT matrix, cell_id, verdict, failed_repeats, repeats,
       run_id, started, candidate_name, candidate_version, candidate_sha256
FROM ranked WHERE n <= :limit ORDER BY matrix, cell_id, n
"""

# One cell's earlier results, as _EARLIER gives them for every cell of a recorded run: for the
# page a run writes as the cell ends, before the run is in the history.
_CELL_EARLIER = """
SELECT c.verdict, c.failed_repeats, c.repeats,
       e.run_id, e.started, e.candidate_name, e.candidate_version, e.candidate_sha256
FROM cells c JOIN runs e ON c.run_id = e.run_id
WHERE c.matrix = :matrix AND c.cell_id = :cell AND e.matrix_key = :key
  AND (e.started_ts < :ts OR (e.started_ts = :ts AND e.run_id < :id))
ORDER BY e.started_ts DESC, e.run_id DESC LIMIT :limit
"""

_PREVIOUS_RUN = """
SELECT run_id FROM runs
WHERE matrix_key = :key AND (started_ts < :ts OR (started_ts = :ts AND run_id < :id))
ORDER BY started_ts DESC, run_id DESC LIMIT 1
"""

# SQLite gives the other columns of the row that holds a MIN() or MAX() ("bare columns").
_SIGNATURES = """
WITH wanted AS (SELECT value AS signature FROM json_each(:signatures)),
seen AS (SELECT k.signature, k.matrix, k.cell_id, r.run_id, r.started, r.started_ts
         FROM crashes k JOIN runs r ON k.run_id = r.run_id
         WHERE k.signature IN (SELECT signature FROM wanted)),
first AS (SELECT signature, run_id, started, MIN(started_ts) FROM seen GROUP BY signature),
last AS (SELECT signature, run_id, started, MAX(started_ts) FROM seen GROUP BY signature),
counts AS (SELECT signature, COUNT(DISTINCT matrix || char(0) || cell_id) AS cells,
                  COUNT(DISTINCT run_id) AS runs
           FROM seen GROUP BY signature)
SELECT c.signature, f.run_id, f.started, l.run_id, l.started, c.cells, c.runs
FROM counts c JOIN first f USING (signature) JOIN last l USING (signature)
"""


def default_history(run_dir: Path) -> Path:
    """``reports/history.sqlite`` for ``reports/<run-id>/``: the folder that holds the runs."""
    return run_dir.resolve().parent / HISTORY_FILE


def matrix_key(run: RunInfo) -> str:
    """What makes two runs runs "of the same matrix": the same matrix files."""
    return "\n".join(sorted(set(run.matrix)))


def _timestamp(moment: datetime) -> float:
    """A POSIX time for ordering runs; a time without a zone is taken as UTC."""
    if moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return 0.0


def _tally(cell: CellResult) -> tuple[int, int]:
    """The cell's repeats that failed, of those with a verdict (0 of them: it ran once)."""
    if not cell.repeats:
        return 0, 0
    judged = [r for r in cell.repeats if r.verdict is not Verdict.INFRA_ERROR]
    failed = sum(1 for r in judged if r.verdict.is_failure)
    return failed, len(judged) if len(cell.repeats) > 1 else 0


def _outcome(run: RunInfo, cell: CellResult) -> Outcome:
    failed, repeats = _tally(cell)
    return Outcome(
        run_id=run.id,
        started=run.started.isoformat(),
        verdict=cell.verdict,
        candidate=run.candidate_key,
        failed_repeats=failed,
        repeats=repeats,
    )


def _earlier_than(run: RunInfo) -> dict[str, object]:
    """The parameters that select the runs of ``run``'s matrix files before it, and how many
    results of a cell the trend takes from them."""
    return {
        "key": matrix_key(run),
        "ts": _timestamp(run.started),
        "id": run.id,
        "limit": TREND_RUNS - 1,
    }


def _earlier_outcome(row: Sequence[Any]) -> Outcome | None:
    """An earlier result read back (verdict, repeats, run, candidate), None for a verdict this
    compatlab does not know (written by a newer one: not comparable)."""
    verdict, failed, repeats, run_id, started, name, version, sha = row
    if verdict not in _VERDICTS:
        return None
    return Outcome(run_id, started, _VERDICTS[verdict], (name, version, sha), failed, repeats)


class History:
    """One history file, opened (and created, with its schema) on first use."""

    def __init__(self, path: Path, *, timeout: float = 60.0, threads: bool = False) -> None:
        """``threads``: the caller may use the store from several threads, one at a time."""
        self.path = path
        self.timeout = timeout
        self.threads = threads
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> History:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"history {self.path}: cannot {doing}: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"history {self.path}: cannot {doing}: {exc.strerror}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (IMMEDIATE): a second writer waits for it."""
        db = self._open()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        db.commit()

    def _open(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
        db = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,
            check_same_thread=not self.threads,
        )
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            self._db = db
            with self._transaction() as t:
                version = t.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StorageError(
                        f"history {self.path} has schema {version}, newer than the "
                        f"{SCHEMA_VERSION} this compatlab reads: upgrade compatlab"
                    )
                if version == 0:
                    for statement in _SCHEMA:
                        t.execute(statement)
                    t.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db = None
            db.close()
            raise
        return db

    def record(self, run: RunInfo, cells: Sequence[CellResult]) -> None:
        """Put ``run`` and its cells in the history, replacing what it held of that run."""
        with self._errors("record the run"), self._transaction() as db:
            for table in ("crashes", "cells", "runs"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run.id,))
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.id,
                    matrix_key(run),
                    run.started.isoformat(),
                    _timestamp(run.started),
                    run.finished.isoformat() if run.finished else None,
                    run.candidate_name,
                    run.candidate_version,
                    run.candidate_sha256,
                    run.compatlab_version,
                    datetime.now(UTC).isoformat(),
                ),
            )
            rows = {}
            for cell in cells:  # a cell given twice: the last one counts, as in results.json
                rows[(cell.matrix, cell.id)] = (
                    run.id,
                    cell.matrix,
                    cell.id,
                    cell.verdict.value,
                    cell.attribution.value if cell.attribution else None,
                    *_tally(cell),
                    cell.fleet_share,
                )
            db.executemany("INSERT INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows.values())
            db.executemany(
                "INSERT OR IGNORE INTO crashes VALUES (?, ?, ?, ?)",
                (
                    (run.id, cell.matrix, cell.id, signature)
                    for cell in cells
                    for signature in crash_signatures(cell)
                ),
            )

    def view(
        self,
        run: RunInfo,
        cells: Sequence[CellResult],
        known: Mapping[tuple[str, str], CellHistory] | None = None,
    ) -> HistoryView:
        """What changed for each cell of ``run`` (recorded already) since earlier runs.

        ``known``: cells' histories read as the run went (:meth:`cell`), by ``(matrix, id)``,
        which are not read again -- the end of a 10,000-cell run with a long history would
        spend seconds on it.
        """
        params = _earlier_than(run)
        known = known or {}
        todo = [c for c in cells if (c.matrix, c.id) not in known]
        with self._errors("read the history"):
            db = self._open()
            earlier: dict[tuple[str, str], list[Outcome]] = {}
            for matrix, cell_id, *row in db.execute(_EARLIER, params) if todo else ():
                outcome = _earlier_outcome(row)
                if outcome is not None:
                    earlier.setdefault((matrix, cell_id), []).append(outcome)
            previous = db.execute(_PREVIOUS_RUN, params).fetchone()
            wanted = sorted({s for c in cells for s in crash_signatures(c)})
            signatures = [
                SignatureSeen(*row)
                for row in db.execute(_SIGNATURES, {"signatures": json.dumps(wanted)})
            ]
        current = {(c.matrix, c.id): _outcome(run, c) for c in todo}
        view = build_view(
            current,
            earlier,
            signatures,
            path=str(self.path),
            previous_run=previous[0] if previous else None,
        )
        view.cells.update((k, known[k]) for k in ((c.matrix, c.id) for c in cells) if k in known)
        return view

    def cell(self, run: RunInfo, cell: CellResult) -> CellHistory:
        """What changed for one cell of ``run`` since earlier runs, whether or not ``run`` is
        recorded yet: what :meth:`view` gives for it once it is (a cell's page, written when the
        cell ends, is the page a re-render writes)."""
        params = {**_earlier_than(run), "matrix": cell.matrix, "cell": cell.id}
        with self._errors("read the history"):
            rows = self._open().execute(_CELL_EARLIER, params).fetchall()
        earlier = [o for o in map(_earlier_outcome, rows) if o is not None]
        current = _outcome(run, cell)
        change, previous = classify(current, earlier)
        return CellHistory(change, previous, tuple(trend(current, earlier)))

    def runs(self) -> list[str]:
        """The ids of the recorded runs, oldest first."""
        with self._errors("read the history"):
            rows = self._open().execute("SELECT run_id FROM runs ORDER BY started_ts, run_id")
            return [row[0] for row in rows]
