"""``reports/<run-id>/results.json``: the run's results, written to the DESIGN.md contract.

Schema 1::

    {"schema": 1,
     "run": {"id", "matrix": [...], "candidate": {"name", "version"}, "started", "finished",
             "hosts": [...], "complete"},
     "cells": [CellResult.as_json(), ...]}

Other tools (``compatlab report``, ``compatlab signoff``, ``--matrix-resume``, history) read this
file, so every write is atomic -- a temporary file beside it, fsynced, then renamed over it -- and
a crash mid-write leaves the previous version, never half a file. The file is rewritten after each
cell (:class:`ResultsWriter`), so a run killed at cell 900 of 1000 still has 899 verdicts. The
writer keeps each cell's JSON as text, so a rewrite joins text instead of serialising the whole
run again; and it keeps a command's long output out of the file: an excerpt of
:data:`RESULTS_OUTPUT_LIMIT` characters stays, the whole output goes to a file in the cell's
evidence folder, named in its ``artifacts`` (:func:`keep_long_outputs`).

While a run is going, ``finished`` holds the time of the last write (the contract wants a string)
and ``run.complete`` is false; :func:`load_results` gives ``finished=None`` for such a run.
"""

from __future__ import annotations

import json
import logging
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
from compatlab.files import MAX_RESULTS_BYTES, read_text
from compatlab.lab.storage import cell_slug as _evidence_slug
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
from compatlab.text import cap_text

__all__ = [
    "RESULTS_FILE",
    "RESULTS_OUTPUT_LIMIT",
    "SCHEMA",
    "Results",
    "ResultsWriter",
    "RunInfo",
    "cap_text",
    "evidence_folder",
    "keep_long_outputs",
    "load_results",
    "output_artifact",
    "results_document",
    "write_results",
    "write_text_atomic",
]

log = logging.getLogger("compatlab.report")

SCHEMA = 1
RESULTS_FILE = "results.json"
# Characters of one command output stream kept in results.json; the whole goes to a file.
RESULTS_OUTPUT_LIMIT = 64 * 1024
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


def _results_path(path: Path) -> Path:
    return path / RESULTS_FILE if path.suffix != ".json" else path


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
    target = _results_path(path)
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
        self.path = _results_path(run_dir)
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
            self._put(cell)
            return self._write()

    def finish(self, finished: datetime) -> Path:
        """Mark the run complete and rewrite the file."""
        with self._lock:
            self._run = replace(self._run, finished=finished)
            return self._write()


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
    # A regular file of bounded size: a FIFO must not hang `compatlab report`, nor /dev/zero
    # fill its memory.
    raw = read_text(path, limit=MAX_RESULTS_BYTES, what="results file")
    try:
        doc = r.obj(json.loads(raw), "$")
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not JSON: {exc.msg}", file=path, line=exc.lineno, column=exc.colno
        ) from exc
    except ValueError as exc:  # an integer past Python's digit limit
        raise InputError(f"not JSON compatlab can read: {exc}", file=path) from exc
    except RecursionError:
        raise InputError("not a results.json: nested too deeply", file=path) from None
    schema = r.get(doc, "schema", "$")
    if schema != SCHEMA:
        raise r.fail("$.schema", f"schema {schema!r} is not the {SCHEMA} this compatlab reads")
    cells = r.items(doc, "cells", "$")
    return Results(
        run=_run(r, doc), cells=[_cell(r, c, f"cells[{i}]") for i, c in enumerate(cells)]
    )
