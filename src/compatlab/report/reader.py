"""Reading a results.json back: :func:`load_results` and :func:`cell_from_json`.

Other tools (``compatlab report``, ``compatlab signoff``, ``--matrix-resume``, the history) read
what a run wrote, and a hand-edited or foreign file must fail loudly -- naming the file and the
JSON path of the first thing that breaks the contract -- instead of half-loading. Keys added to
the schema since a file was written (``fleet_share``, ``repeats``, ``candidate.sha256``,
``matrix_sha256``, ``compatlab_version``) are optional here, so old files still load.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from compatlab.cost import bakes_from_json
from compatlab.errors import InputError
from compatlab.files import MAX_RESULTS_BYTES, read_text
from compatlab.model import (
    Attribution,
    Boot,
    BootKind,
    BootOutcome,
    Bugcheck,
    CellResult,
    CommandRecord,
    Event,
    Repeat,
    Verdict,
)
from compatlab.report.document import RESULTS_FILE, SCHEMA, Results, RunInfo

__all__ = ["cell_from_json", "load_results", "results_path"]

_S = TypeVar("_S", bound=str)
_BOOT_OUTCOMES: tuple[BootOutcome, ...] = typing.get_args(BootOutcome)
_BOOT_KINDS: tuple[BootKind, ...] = typing.get_args(BootKind)


def results_path(path: Path) -> Path:
    """results.json itself, given the run folder or the file."""
    return path / RESULTS_FILE if path.suffix != ".json" else path


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

    def opt_number(self, value: Mapping[str, object], key: str, where: str) -> float | None:
        """A number, or None where the key is missing or null."""
        return None if value.get(key) is None else self.number(value, key, where)

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
    sha256 = candidate.get("sha256")
    return RunInfo(
        id=r.text(run, "id", "run"),
        matrix=r.texts(run, "matrix", "run"),
        candidate_name=r.text(candidate, "name", "run.candidate"),
        candidate_version=r.text(candidate, "version", "run.candidate"),
        started=r.when(run, "started", "run"),
        finished=r.when(run, "finished", "run") if complete is not False else None,
        hosts=r.texts(run, "hosts", "run"),
        candidate_sha256="" if sha256 is None else r.text(candidate, "sha256", "run.candidate"),
        matrix_sha256=r.str_map(run, "matrix_sha256", "run") if "matrix_sha256" in run else {},
        compatlab_version=r.opt_text(run, "compatlab_version", "run"),
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
        signature=r.opt_text(b, "signature", where),  # written since issue 11; optional
    )


def _boot(r: _Reader, value: object, where: str) -> Boot:
    b = r.obj(value, where)
    outcome = r.choice(r.text(b, "outcome", where), _BOOT_OUTCOMES, f"{where}.outcome")
    return Boot(
        n=r.integer(b, "n", where),
        outcome=outcome,
        seconds=r.number(b, "seconds", where),
        phase=r.opt_text(b, "phase", where),
        kind=r.choice(r.opt_text(b, "kind", where) or "boot", _BOOT_KINDS, f"{where}.kind"),
    )


_NO_DATA: dict[str, str] = {}  # "no data key" for _plain_event, told apart by identity


def _plain_event(value: object) -> Event | None:
    """An event that is what the writer writes, read without :class:`_Reader`'s checks one key
    at a time (a 10,000-cell run has half a million events); None for anything else, which
    :func:`_event` then reads, or rejects naming the JSON path."""
    if type(value) is not dict:
        return None
    t, source, kind = value.get("t"), value.get("source"), value.get("kind")
    detail, data = value.get("detail", ""), value.get("data", _NO_DATA)
    if (
        (type(t) is float or type(t) is int)
        and type(source) is str
        and type(kind) is str
        and type(detail) is str
        and (
            data is _NO_DATA or (type(data) is dict and all(type(v) is str for v in data.values()))
        )
    ):
        return Event(float(t), source, kind, detail, {} if data is _NO_DATA else dict(data))
    return None


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


def _repeat(r: _Reader, value: object, where: str) -> Repeat:
    x = r.obj(value, where)
    attribution = x.get("attribution")
    return Repeat(
        verdict=r.choice(r.text(x, "verdict", where), list(Verdict), f"{where}.verdict"),
        attribution=None
        if attribution is None
        else r.choice(r.text(x, "attribution", where), list(Attribution), f"{where}.attribution"),
        seconds=r.number(x, "seconds", where) if "seconds" in x else 0.0,
        signature=r.opt_text(x, "signature", where),
    )


def _phase(r: _Reader, value: object, where: str) -> dict[str, object]:
    """A phase, kept as the dict it is; its ``cost`` (written since issue 11; optional) must
    have the shape :mod:`compatlab.cost` reads."""
    phase = dict(r.obj(value, where))
    if phase.get("cost") is not None:
        try:
            bakes_from_json(phase["cost"])
        except ValueError as exc:
            raise r.fail(f"{where}.cost", str(exc)) from None
    return phase


def _share(r: _Reader, c: Mapping[str, object], where: str) -> float | None:
    share = r.opt_number(c, "fleet_share", where)
    if share is not None and not 0.0 <= share <= 1.0:
        raise r.fail(f"{where}.fleet_share", f"{share} is not a share between 0 and 1")
    return share


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
            _plain_event(e) or _event(r, e, f"{where}.events[{i}]")
            for i, e in enumerate(r.items(c, "events", where))
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
            _phase(r, x, f"{where}.phases[{i}]")
            for i, x in enumerate(r.items(c, "phases", where) if "phases" in c else [])
        ],
        reruns=[
            dict(r.obj(x, f"{where}.reruns[{i}]"))
            for i, x in enumerate(r.items(c, "reruns", where) if "reruns" in c else [])
        ],
        fleet_share=_share(r, c, where),
        repeats=[
            _repeat(r, x, f"{where}.repeats[{i}]")
            for i, x in enumerate(r.items(c, "repeats", where) if "repeats" in c else [])
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
    path = results_path(path)
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
