"""``junit.xml`` beside results.json, for CI servers that chart JUnit.

One ``<testsuite>`` per matrix file; each cell a ``<testcase>`` with ``classname`` = the matrix
file and ``name`` = the cell id, ``time`` in seconds, and ``<properties>`` carrying the verdict,
attribution and bugcheck code/name. Failing verdicts are ``<failure type="<verdict>">`` with the
reason as message; ``infra_error`` is an ``<error>``: the lab failed, not the test -- the same
distinction JUnit draws between a failed assertion and a broken test.

Text is cleaned of terminal escapes and control characters (guest text carries them) and
bounded before it goes in; a ``time`` that is not a finite number (a hand-edited results.json)
is left out rather than written as ``inf``, which JUnit readers refuse.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from compatlab.model import CellResult, Verdict
from compatlab.report.results import RunInfo, write_text_atomic
from compatlab.text import cap_text, printable

__all__ = ["JUNIT_FILE", "junit_text", "junit_xml", "testcase_xml", "write_junit"]

JUNIT_FILE = "junit.xml"

# Characters XML 1.0 cannot hold at all, not even escaped. Serial consoles and installer output
# are full of them (ANSI escapes, NULs); ElementTree would write them and break every parser.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_EVENTS_IN_FAILURE = 25
# Where junit_text puts each testcase's text: nothing escaped can look like it ("<" is "&lt;").
_PLACEHOLDER = "_case"
_PLACED = re.compile(r'<_case n="(\d+)" />')
_TEXT_LIMIT = 64 * 1024  # characters of one attribute or failure text


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", printable(cap_text(text, _TEXT_LIMIT)))


def _time(element: ET.Element, seconds: float) -> None:
    if math.isfinite(seconds):
        element.set("time", f"{seconds:.3f}")


def _matrix_of(cell: CellResult, run: RunInfo) -> str:
    if cell.matrix:
        return cell.matrix
    return run.matrix[0] if len(run.matrix) == 1 else "compatlab"


def _failure_text(cell: CellResult) -> str:
    lines = [cell.reason or cell.verdict.value]
    if cell.bugcheck:
        params = ", ".join(cell.bugcheck.params)
        lines.append(f"bugcheck {cell.bugcheck.code} {cell.bugcheck.name} ({params})".rstrip())
    for boot in cell.boots:
        phase = f" [{boot.phase}]" if boot.phase else ""
        note = f" ({boot.note})" if boot.note else ""
        lines.append(f"boot {boot.n}{phase}: {boot.outcome} after {boot.seconds:.1f} s{note}")
    events = cell.events[-_EVENTS_IN_FAILURE:]
    if events:
        if len(cell.events) > len(events):
            lines.append(f"last {len(events)} of {len(cell.events)} events:")
        lines += [f"{e.t:9.3f}  {e.source:<10} {e.kind:<14} {e.detail}".rstrip() for e in events]
    lines += [f"{name}: {path}" for name, path in sorted(cell.artifacts.items())]
    return _clean("\n".join(lines))


def _testcase(cell: CellResult, classname: str) -> ET.Element:
    case = ET.Element("testcase", classname=_clean(classname), name=_clean(cell.id))
    _time(case, cell.seconds)
    props = ET.SubElement(case, "properties")
    values = [("verdict", cell.verdict.value)]
    if cell.attribution is not None:
        values.append(("attribution", cell.attribution.value))
    if cell.bugcheck is not None:
        values += [("bugcheck.code", cell.bugcheck.code), ("bugcheck.name", cell.bugcheck.name)]
    if cell.attempts != 1:
        values.append(("attempts", str(cell.attempts)))
    for name, value in values:
        ET.SubElement(props, "property", name=name, value=_clean(value))
    if cell.verdict is Verdict.PASS:
        return case
    tag = "error" if cell.verdict is Verdict.INFRA_ERROR else "failure"
    element = ET.SubElement(
        case, tag, type=cell.verdict.value, message=_clean(cell.reason or cell.verdict.value)
    )
    element.text = _failure_text(cell)
    return case


def testcase_xml(run: RunInfo, cell: CellResult) -> str:
    """``cell``'s ``<testcase>`` as junit.xml holds it, indented for its depth there: what a
    run keeps of each cell as it ends, so that writing junit.xml at the end only joins them."""
    case = _testcase(cell, _matrix_of(cell, run))
    ET.indent(case, level=2)
    return ET.tostring(case, encoding="unicode")


def junit_xml(
    run: RunInfo, cells: Iterable[CellResult], *, placeholders: bool = False
) -> ET.Element:
    """The ``<testsuites>`` element for a run (``placeholders``: each testcase an empty
    ``<_case n="...">`` that :func:`junit_text` replaces with the case's text)."""
    by_matrix: dict[str, list[CellResult]] = {}
    for cell in cells:
        by_matrix.setdefault(_matrix_of(cell, run), []).append(cell)
    root = ET.Element("testsuites", name=_clean(f"compatlab {run.id}"))
    totals = {"tests": 0, "failures": 0, "errors": 0}
    total_time = 0.0
    for matrix, group in by_matrix.items():
        counts = _counts(group)
        seconds = sum(c.seconds for c in group)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_clean(matrix),
            tests=str(counts["tests"]),
            failures=str(counts["failures"]),
            errors=str(counts["errors"]),
            skipped="0",
            timestamp=run.started.isoformat(),
        )
        _time(suite, seconds)
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("run", run.id),
            ("candidate.name", run.candidate_name),
            ("candidate.version", run.candidate_version),
            ("hosts", " ".join(run.hosts)),
        ):
            ET.SubElement(props, "property", name=name, value=_clean(value))
        for cell in group:
            if placeholders:
                ET.SubElement(suite, _PLACEHOLDER, n=str(id(cell)))
            else:
                suite.append(_testcase(cell, matrix))
        for key in totals:
            totals[key] += counts[key]
        total_time += seconds
    for key, total in totals.items():
        root.set(key, str(total))
    _time(root, total_time)
    return root


def _counts(cells: Sequence[CellResult]) -> dict[str, int]:
    errors = sum(1 for c in cells if c.verdict is Verdict.INFRA_ERROR)
    failures = sum(1 for c in cells if c.verdict.is_failure) - errors
    return {"tests": len(cells), "failures": failures, "errors": errors}


def junit_text(
    run: RunInfo, cells: Sequence[CellResult], cases: Mapping[int, str] | None = None
) -> str:
    """junit.xml's text; ``cases`` holds testcases written already (:func:`testcase_xml`), by
    ``id(cell)``, which are not written again. The same text as ``junit_xml`` indented."""
    cases = cases or {}
    by_id = {id(cell): cell for cell in cells}
    root = junit_xml(run, cells, placeholders=True)
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=True)

    def case(match: re.Match[str]) -> str:
        n = int(match.group(1))
        found = cases.get(n)
        return found if found is not None else testcase_xml(run, by_id[n])

    return _PLACED.sub(case, text)


def write_junit(
    run_dir: Path,
    run: RunInfo,
    cells: Iterable[CellResult],
    cases: Mapping[int, str] | None = None,
) -> Path:
    """Write ``junit.xml`` into the run folder, atomically (``cases``: see :func:`junit_text`)."""
    text = junit_text(run, list(cells), cases)
    return write_text_atomic(run_dir / JUNIT_FILE, text + "\n")
