"""Writing ``reports/<run-id>/results.json``: the run's results, to the DESIGN.md contract.

What the file holds is :mod:`compatlab.report.document`; reading it back is
:mod:`compatlab.report.reader`. Other tools (``compatlab report``, ``compatlab signoff``,
``--matrix-resume``, the history) read this file, so every write is atomic -- a temporary file
beside it, fsynced, then renamed over it -- and a crash mid-write leaves the previous version,
never half a file. The file is rewritten after each cell (:class:`ResultsWriter`), so a run
killed at cell 900 of 1000 still has 899 verdicts. The writer keeps each cell's JSON as text, so
a rewrite joins text instead of serialising the whole run again; and it keeps a command's long
output out of the file: an excerpt of :data:`RESULTS_OUTPUT_LIMIT` characters stays, the whole
output goes to a file in the cell's evidence folder, named in its ``artifacts``
(:func:`keep_long_outputs`).

While a run is going, ``finished`` holds the time of the last write (the contract wants a string)
and ``run.complete`` is false; :func:`load_results` gives ``finished=None`` for such a run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from compatlab.errors import StorageError
from compatlab.lab.storage import cell_slug as _evidence_slug
from compatlab.model import CellResult
from compatlab.report.document import RESULTS_FILE, SCHEMA, Results, RunInfo, results_document
from compatlab.report.reader import cell_from_json, load_results, results_path
from compatlab.text import cap_text

__all__ = [
    "RESULTS_FILE",
    "RESULTS_OUTPUT_LIMIT",
    "SCHEMA",
    "Results",
    "ResultsWriter",
    "RunInfo",
    "cap_text",
    "cell_from_json",
    "evidence_folder",
    "keep_long_outputs",
    "load_results",
    "output_artifact",
    "results_document",
    "write_results",
    "write_text_atomic",
]

log = logging.getLogger("compatlab.report")

# Characters of one command output stream kept in results.json; the whole goes to a file.
RESULTS_OUTPUT_LIMIT = 64 * 1024


def write_text_atomic(path: Path, text: str, *, durable: bool = True) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half.

    ``durable`` also fsyncs the file and its folder, so the new version survives a power cut;
    pages that can be re-rendered from results.json skip it (it is most of their write time).
    Raises :class:`StorageError` when the disk refuses (full, read-only, no permission).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            # backslashreplace: a lone surrogate (JSON can carry "\ud800") is written as its
            # escape, which a JSON reader reads back as it was, instead of failing the write.
            with os.fdopen(
                fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n"
            ) as out:
                out.write(text)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if durable:
            # The rename is only durable once the directory entry is on disk too.
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _dumps(value: object) -> str:
    try:
        return json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False)
    except ValueError:
        # An infinite or NaN number (a clock gone wrong, a hand-edited file resumed): written as
        # Python's json writes and reads it, rather than losing the run's results.
        log.warning("compatlab: results.json holds a number that is not finite")
        return json.dumps(value, indent=1, ensure_ascii=False, allow_nan=True)


def _cell_text(cell: CellResult) -> str:
    """One cell's JSON, indented as it stands in the file's ``cells`` list."""
    return "  " + _dumps(cell.as_json()).replace("\n", "\n  ")  # JSON strings hold no raw \n


def _document_text(run: RunInfo, cells: Iterable[str]) -> str:
    """results.json's text from the run and the cells' texts: what ``json.dumps(indent=1)`` of
    :func:`results_document` gives, without serialising the cells again."""
    head = _dumps({"schema": SCHEMA, "run": run.as_json(), "cells": []})
    empty = "[]\n}"
    if not head.endswith(empty):
        raise AssertionError("results.json: 'cells' must be the document's last key")
    joined = ",\n".join(cells)
    if not joined:
        return head + "\n"
    return f"{head[: -len(empty)]}[\n{joined}\n ]\n}}\n"


def write_results(path: Path, run: RunInfo, cells: Iterable[CellResult]) -> Path:
    """Write results.json atomically. ``path`` is the run folder or the file itself."""
    target = results_path(path)
    return write_text_atomic(target, _document_text(run, (_cell_text(c) for c in cells)))


def output_artifact(n: int, stream: str) -> str:
    """The ``artifacts`` key naming the file that holds the whole ``stream`` (``"stdout"`` or
    ``"stderr"``) of a cell's command ``n`` (1-based): ``command-3-stdout``."""
    return f"command-{n}-{stream}"


def evidence_folder(cell: CellResult) -> str:
    """``cells/<slug>``, relative to the run folder: where a cell's evidence is kept (the same
    folder the scenario copies the serial log and screenshots into)."""
    return f"cells/{_evidence_slug(f'{Path(cell.matrix).stem}/{cell.id}')}"


def keep_long_outputs(
    run_dir: Path, cell: CellResult, *, limit: int = RESULTS_OUTPUT_LIMIT
) -> CellResult:
    """``cell`` with each command output of more than ``limit`` characters cut to an excerpt
    (:func:`cap_text`: head and tail around ``[… N bytes cut]``), the whole output written to
    ``<evidence folder>/command-<n>-<stream>.txt`` under ``run_dir`` and named in the cell's
    ``artifacts`` under :func:`output_artifact`. A cell without long output comes back as is.

    If the disk refuses the file, the excerpt stays without it (logged): a full disk must not
    cost the cell its result.
    """
    long = [
        (n, record)
        for n, record in enumerate(cell.commands, start=1)
        if len(record.stdout) > limit or len(record.stderr) > limit
    ]
    if not long:
        return cell
    folder = evidence_folder(cell)
    commands = list(cell.commands)
    artifacts = dict(cell.artifacts)
    for n, record in long:
        kept = {"stdout": record.stdout, "stderr": record.stderr}
        for stream, text in list(kept.items()):
            if len(text) <= limit:
                continue
            relative = f"{folder}/command-{n}-{stream}.txt"
            try:
                write_text_atomic(run_dir / relative, text, durable=False)
            except StorageError as exc:
                log.warning("compatlab: %s: output of command %d not kept: %s", cell.id, n, exc)
            else:
                artifacts[output_artifact(n, stream)] = relative
            kept[stream] = cap_text(text, limit)
        commands[n - 1] = replace(record, stdout=kept["stdout"], stderr=kept["stderr"])
    return replace(cell, commands=commands, artifacts=artifacts)


class ResultsWriter:
    """Keeps a run's results and rewrites results.json after every cell.

    A cell reported again under the same ``(matrix, id)`` (a retry) replaces the earlier one,
    keeping its place. Thread-safe: the plugin may report from several threads.

    Each cell is serialised once, when it is added, and kept as text: the rewrite after a cell
    joins those texts (the file stays atomic and whole) instead of serialising every cell again.
    A command's long output is kept as a file, not in results.json (:func:`keep_long_outputs`).
    """

    def __init__(self, run_dir: Path, run: RunInfo, cells: Iterable[CellResult] = ()) -> None:
        self.path = results_path(run_dir)
        self._run = run
        self._cells: dict[tuple[str, str], CellResult] = {}
        self._texts: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for cell in cells:
            self._put(cell)

    def _put(self, cell: CellResult) -> None:
        cell = keep_long_outputs(self.path.parent, cell)
        key = (cell.matrix, cell.id)
        self._cells[key] = cell
        self._texts[key] = _cell_text(cell)

    def _write(self) -> Path:
        return write_text_atomic(self.path, _document_text(self._run, self._texts.values()))

    @classmethod
    def resume(cls, run_dir: Path, run: RunInfo) -> ResultsWriter:
        """A writer that keeps the cells already in ``run_dir``'s results.json, if there is one.

        The run keeps its first start time; the rest of ``run`` (hosts, matrices) is the new one.
        """
        path = results_path(run_dir)
        if not path.exists():
            return cls(run_dir, run)
        old = load_results(path)
        return cls(run_dir, replace(run, started=old.run.started, finished=None), old.cells)

    @property
    def run(self) -> RunInfo:
        return self._run

    @property
    def cells(self) -> list[CellResult]:
        with self._lock:
            return list(self._cells.values())

    def result(self, matrix: str, cell_id: str) -> CellResult | None:
        """The cell as the file holds it (long outputs kept as files), if it was added."""
        with self._lock:
            return self._cells.get((matrix, cell_id))

    def add(self, cell: CellResult) -> Path:
        """Record one finished cell and rewrite the file."""
        with self._lock:
            self._put(cell)
            return self._write()

    def finish(self, finished: datetime) -> Path:
        """Mark the run complete and rewrite the file."""
        with self._lock:
            self._run = replace(self._run, finished=finished)
            return self._write()
