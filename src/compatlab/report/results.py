"""``reports/<run-id>/results.json``: the run's results, written to the DESIGN.md contract.

Schema 1::

    {"schema": 1,
     "run": {"id", "matrix": [...], "candidate": {"name", "version"}, "started", "finished",
             "hosts": [...], "complete"},
     "cells": [CellResult.as_json(), ...]}

Other tools (``compatlab report``, ``compatlab signoff``, ``--matrix-resume``, history) read this
file, so every write is atomic -- a temporary file beside it, fsynced, then renamed over it -- and
a crash mid-write leaves the previous version, never half a file. The file is rewritten after each
cell (:class:`ResultsWriter`), so a run killed at cell 900 of 1000 still has 899 verdicts.

While a run is going, ``finished`` holds the time of the last write (the contract wants a string)
and ``run.complete`` is false; :func:`load_results` gives ``finished=None`` for such a run.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import typing
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from compatlab.errors import InputError, StorageError
from compatlab.model import (
    Attribution,
    Boot,
    BootOutcome,
    Bugcheck,
    CellResult,
    CommandRecord,
    Event,
    Verdict,
)

__all__ = [
    "RESULTS_FILE",
    "SCHEMA",
    "Results",
    "ResultsWriter",
    "RunInfo",
    "load_results",
    "results_document",
    "write_results",
    "write_text_atomic",
]

SCHEMA = 1
RESULTS_FILE = "results.json"
_S = TypeVar("_S", bound=str)
_BOOT_OUTCOMES: tuple[BootOutcome, ...] = typing.get_args(BootOutcome)


@dataclass(frozen=True)
class RunInfo:
    """The run a report is about: what was tested, where, when."""

    id: str
    matrix: tuple[str, ...]
    candidate_name: str
    candidate_version: str
    started: datetime
    finished: datetime | None = None  # None while the run is still going
    hosts: tuple[str, ...] = ()

    def as_json(self, *, written: datetime | None = None) -> dict[str, object]:
        """The contract's ``run`` object. ``written`` stands in for ``finished`` mid-run."""
        finished = self.finished or written or datetime.now(UTC)
        return {
            "id": self.id,
            "matrix": list(self.matrix),
            "candidate": {"name": self.candidate_name, "version": self.candidate_version},
            "started": self.started.isoformat(),
            "finished": finished.isoformat(),
            "hosts": list(self.hosts),
            "complete": self.finished is not None,
        }


@dataclass
class Results:
    """A results.json, read back as typed objects."""

    run: RunInfo
    cells: list[CellResult] = field(default_factory=list)

    def cell(self, matrix: str, cell_id: str) -> CellResult | None:
        for cell in self.cells:
            if (cell.matrix, cell.id) == (matrix, cell_id):
                return cell
        return None

    def finished(self) -> set[tuple[str, str]]:
        """``(matrix, cell id)`` of cells ``--matrix-resume`` may skip.

        An ``infra_error`` cell is not finished: the lab failed, not the update, so a resumed
        run tries it again.
        """
        return {(c.matrix, c.id) for c in self.cells if c.verdict is not Verdict.INFRA_ERROR}


def results_document(
    run: RunInfo, cells: Iterable[CellResult], *, written: datetime | None = None
) -> dict[str, object]:
    """The whole results.json as a JSON-ready dict."""
    return {
        "schema": SCHEMA,
        "run": run.as_json(written=written),
        "cells": [cell.as_json() for cell in cells],
    }


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
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
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


def _results_path(path: Path) -> Path:
    return path / RESULTS_FILE if path.suffix != ".json" else path


def write_results(path: Path, run: RunInfo, cells: Iterable[CellResult]) -> Path:
    """Write results.json atomically. ``path`` is the run folder or the file itself."""
    target = _results_path(path)
    text = json.dumps(results_document(run, cells), indent=1, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(target, text + "\n")


class ResultsWriter:
    """Keeps a run's results and rewrites results.json after every cell.

    A cell reported again under the same ``(matrix, id)`` (a retry) replaces the earlier one,
    keeping its place. Thread-safe: the plugin may report from several threads.
    """

    def __init__(self, run_dir: Path, run: RunInfo, cells: Iterable[CellResult] = ()) -> None:
        self.path = _results_path(run_dir)
        self._run = run
        self._cells: dict[tuple[str, str], CellResult] = {(c.matrix, c.id): c for c in cells}
        self._lock = threading.Lock()

    @classmethod
    def resume(cls, run_dir: Path, run: RunInfo) -> ResultsWriter:
        """A writer that keeps the cells already in ``run_dir``'s results.json, if there is one.

        The run keeps its first start time; the rest of ``run`` (hosts, matrices) is the new one.
        """
        path = _results_path(run_dir)
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

    def add(self, cell: CellResult) -> Path:
        """Record one finished cell and rewrite the file."""
        with self._lock:
            self._cells[(cell.matrix, cell.id)] = cell
            return write_results(self.path, self._run, self._cells.values())

    def finish(self, finished: datetime) -> Path:
        """Mark the run complete and rewrite the file."""
        with self._lock:
            self._run = replace(self._run, finished=finished)
            return write_results(self.path, self._run, self._cells.values())


# -- reading --------------------------------------------------------------------------------------


class _Reader:
    """Typed access to parsed JSON; every complaint names the file and the JSON path."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, where: str, message: str) -> InputError:
        return InputError(
            f"{where}: {message}",
            file=self.file,
            hint=f"results.json schema {SCHEMA}, see DESIGN.md",
        )

    def obj(self, value: object, where: str) -> Mapping[str, object]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {type(value).__name__}")
        return value

    def get(self, value: Mapping[str, object], key: str, where: str) -> object:
        if key not in value:
            raise self.fail(where, f"missing key '{key}'")
        return value[key]

    def text(self, value: Mapping[str, object], key: str, where: str) -> str:
        item = self.get(value, key, where)
        if not isinstance(item, str):
            raise self.fail(f"{where}.{key}", f"expected a string, got {type(item).__name__}")
        return item

    def opt_text(self, value: Mapping[str, object], key: str, where: str) -> str:
        return self.text(value, key, where) if key in value else ""

    def number(self, value: Mapping[str, object], key: str, where: str) -> float:
        item = self.get(value, key, where)
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise self.fail(f"{where}.{key}", f"expected a number, got {type(item).__name__}")
        return float(item)

    def integer(self, value: Mapping[str, object], key: str, where: str) -> int:
        item = self.get(value, key, where)
        if isinstance(item, bool) or not isinstance(item, int):
            raise self.fail(f"{where}.{key}", f"expected an integer, got {type(item).__name__}")
        return item

    def items(self, value: Mapping[str, object], key: str, where: str) -> list[object]:
        item = self.get(value, key, where)
        if not isinstance(item, list):
            raise self.fail(f"{where}.{key}", f"expected a list, got {type(item).__name__}")
        return item

    def texts(self, value: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
        out = self.items(value, key, where)
        for i, item in enumerate(out):
            if not isinstance(item, str):
                raise self.fail(f"{where}.{key}[{i}]", "expected a string")
        return tuple(str(item) for item in out)

    def str_map(self, value: Mapping[str, object], key: str, where: str) -> dict[str, str]:
        item = self.obj(self.get(value, key, where), f"{where}.{key}")
        for k, v in item.items():
            if not isinstance(v, str):
                raise self.fail(f"{where}.{key}.{k}", "expected a string")
        return {k: str(v) for k, v in item.items()}

    def when(self, value: Mapping[str, object], key: str, where: str) -> datetime:
        text = self.text(value, key, where)
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise self.fail(f"{where}.{key}", f"'{text}' is not an ISO-8601 time") from None

    def choice(self, value: str, choices: Iterable[_S], where: str) -> _S:
        for choice in choices:
            if value == choice:
                return choice
        raise self.fail(where, f"unknown value '{value}'")


def _run(r: _Reader, doc: Mapping[str, object]) -> RunInfo:
    run = r.obj(r.get(doc, "run", "$"), "run")
    candidate = r.obj(r.get(run, "candidate", "run"), "run.candidate")
    complete = run.get("complete", True)  # files without the key were written complete
    return RunInfo(
        id=r.text(run, "id", "run"),
        matrix=r.texts(run, "matrix", "run"),
        candidate_name=r.text(candidate, "name", "run.candidate"),
        candidate_version=r.text(candidate, "version", "run.candidate"),
        started=r.when(run, "started", "run"),
        finished=r.when(run, "finished", "run") if complete is not False else None,
        hosts=r.texts(run, "hosts", "run"),
    )


def _bugcheck(r: _Reader, value: object, where: str) -> Bugcheck | None:
    if value is None:
        return None
    b = r.obj(value, where)
    params = r.texts(b, "params", where) if "params" in b else ()
    return Bugcheck(
        code=r.text(b, "code", where),
        name=r.text(b, "name", where),
        params=params,
        source=r.opt_text(b, "source", where),
    )


def _boot(r: _Reader, value: object, where: str) -> Boot:
    b = r.obj(value, where)
    outcome = r.choice(r.text(b, "outcome", where), _BOOT_OUTCOMES, f"{where}.outcome")
    return Boot(
        n=r.integer(b, "n", where),
        outcome=outcome,
        seconds=r.number(b, "seconds", where),
        phase=r.opt_text(b, "phase", where),
    )


def _event(r: _Reader, value: object, where: str) -> Event:
    e = r.obj(value, where)
    return Event(
        t=r.number(e, "t", where),
        source=r.text(e, "source", where),
        kind=r.text(e, "kind", where),
        detail=r.opt_text(e, "detail", where),
        data=r.str_map(e, "data", where) if "data" in e else {},
    )


def _command(r: _Reader, value: object, where: str) -> CommandRecord:
    c = r.obj(value, where)
    code = c.get("exit_code")
    exit_code = None if code is None else r.integer(c, "exit_code", where)
    return CommandRecord(
        phase=r.text(c, "phase", where),
        command=r.text(c, "command", where),
        exit_code=exit_code,
        stdout=r.opt_text(c, "stdout", where),
        stderr=r.opt_text(c, "stderr", where),
        seconds=r.number(c, "seconds", where) if "seconds" in c else 0.0,
        meaning=r.opt_text(c, "meaning", where),
    )


def _cell(r: _Reader, value: object, where: str) -> CellResult:
    c = r.obj(value, where)
    attribution = r.get(c, "attribution", where)
    checks = r.items(c, "checks", where) if "checks" in c else []
    return CellResult(
        id=r.text(c, "id", where),
        build=r.text(c, "build", where),
        hardware=r.text(c, "hardware", where),
        products=r.texts(c, "products", where),
        verdict=r.choice(r.text(c, "verdict", where), list(Verdict), f"{where}.verdict"),
        attribution=None
        if attribution is None
        else r.choice(r.text(c, "attribution", where), list(Attribution), f"{where}.attribution"),
        bugcheck=_bugcheck(r, r.get(c, "bugcheck", where), f"{where}.bugcheck"),
        boots=[
            _boot(r, b, f"{where}.boots[{i}]") for i, b in enumerate(r.items(c, "boots", where))
        ],
        events=[
            _event(r, e, f"{where}.events[{i}]") for i, e in enumerate(r.items(c, "events", where))
        ],
        artifacts=r.str_map(c, "artifacts", where),
        seconds=r.number(c, "seconds", where),
        reason=r.opt_text(c, "reason", where),
        commands=[
            _command(r, x, f"{where}.commands[{i}]")
            for i, x in enumerate(r.items(c, "commands", where) if "commands" in c else [])
        ],
        checks=[dict(r.obj(x, f"{where}.checks[{i}]")) for i, x in enumerate(checks)],
        matrix=r.opt_text(c, "matrix", where),
        attempts=r.integer(c, "attempts", where) if "attempts" in c else 1,
        phases=[
            dict(r.obj(x, f"{where}.phases[{i}]"))
            for i, x in enumerate(r.items(c, "phases", where) if "phases" in c else [])
        ],
        reruns=[
            dict(r.obj(x, f"{where}.reruns[{i}]"))
            for i, x in enumerate(r.items(c, "reruns", where) if "reruns" in c else [])
        ],
    )


def cell_from_json(value: object, *, source: str = "<cell>") -> CellResult:
    """One results.json cell (as parsed JSON) back into a :class:`CellResult`.

    How a cell's result travels from an xdist worker to the controller that writes the report.
    """
    return _cell(_Reader(Path(source)), value, "cell")


def load_results(path: Path) -> Results:
    """Read a results.json (or the run folder holding one) back into typed objects.

    Raises :class:`InputError` naming the file and the JSON path of the first thing that breaks
    the contract, so a hand-edited or foreign file fails loudly instead of half-loading.
    """
    path = _results_path(path)
    r = _Reader(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read results: {exc.strerror or exc}", file=path) from exc
    try:
        doc = r.obj(json.loads(raw), "$")
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not JSON: {exc.msg}", file=path, line=exc.lineno, column=exc.colno
        ) from exc
    schema = r.get(doc, "schema", "$")
    if schema != SCHEMA:
        raise r.fail("$.schema", f"schema {schema!r} is not the {SCHEMA} this compatlab reads")
    cells = r.items(doc, "cells", "$")
    return Results(
        run=_run(r, doc), cells=[_cell(r, c, f"cells[{i}]") for i, c in enumerate(cells)]
    )
