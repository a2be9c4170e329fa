"""``signoff.json`` and ``signoff.html`` beside a run's report, and the summary the command prints.

The page is self-contained (inline CSS, no script, nothing fetched) and rendered by Jinja2 with
autoescape on: cell reasons carry guest text (a panic line, an installer's output), which must
show as text. Every value is also stripped of control characters and capped, as the report's
pages are. Links go to each cell's evidence page in the report beside it, ``cells/<name>.html``,
named as the report names them (:class:`compatlab.report.pages.PageNames`, over the cells in
results.json's order).

Whatever a run did not record (a results.json from before payload checksums) is said as "not
recorded" on the page and ``null`` in the JSON -- never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from compatlab.model import CellResult
from compatlab.report import RunInfo, write_text_atomic
from compatlab.report.pages import PageNames, page_href, qualified
from compatlab.signoff.decide import CellCheck, RingDecision, SignOff
from compatlab.text import cap_text, printable

__all__ = [
    "SCHEMA",
    "SIGNOFF_HTML",
    "SIGNOFF_JSON",
    "headline",
    "signoff_document",
    "summary_lines",
    "write_signoff",
]

SCHEMA = 1
SIGNOFF_HTML = "signoff.html"
SIGNOFF_JSON = "signoff.json"
NOT_RECORDED = "not recorded"
_TEMPLATES = Path(__file__).parent / "templates"
_VALUE_LIMIT = 4096  # characters of any one value on the page: reasons are one line of evidence
_SHOWN_CELLS = 500  # blocking cells listed per ring on the page; the JSON has them all


def headline(signoff: SignOff) -> str:
    """``GO for broad`` / ``NO-GO for broad: may enter internal only``: the line a pipeline
    log and the page start with."""
    entered = signoff.may_enter
    if signoff.go:
        return f"GO for {signoff.target}: may enter {', '.join(entered)}"
    if entered:
        return f"NO-GO for {signoff.target}: may enter {', '.join(entered)} only"
    return f"NO-GO for {signoff.target}: may enter no ring"


def _blast(signoff: SignOff) -> str:
    n = len(signoff.failing)
    if not n:
        return "no cell fails with the candidate"
    cells = "1 cell fails" if n == 1 else f"{n} cells fail"
    return f"{cells} with the candidate: {signoff.failing_fleet.describe()}"


def summary_lines(signoff: SignOff) -> list[str]:
    """A few lines for the terminal: the decision, the blast radius, why each ring is closed."""
    lines = [headline(signoff), _blast(signoff)]
    for decision in signoff.rings:
        if not decision.may_enter:
            lines.append(f"{decision.ring.name}: {decision.reasons[0]}")
    return lines


# -- signoff.json ---------------------------------------------------------------------------------


class _Pages:
    """Where each cell's evidence page is, relative to the run folder: the names the report
    gave its pages (two cells whose ids differ only in unsafe characters get two pages)."""

    def __init__(self, run: RunInfo, cells: Sequence[CellResult]) -> None:
        self.qualify = qualified(run, cells)
        self._names = PageNames(self.qualify)
        self._given = {id(c): n for c, n in zip(cells, self._names.names(cells), strict=True)}

    def href(self, cell: CellResult) -> str:
        name = self._given.get(id(cell)) or self._names.name(cell)
        return page_href(quote(name))


def _cell_json(check: CellCheck, pages: _Pages) -> dict[str, object]:
    cell = check.cell
    return {
        "matrix": cell.matrix,
        "id": cell.id,
        "status": check.status,
        "why": check.why,
        "verdict": cell.verdict.value,
        "attribution": cell.attribution.value if cell.attribution else None,
        "fleet_share": cell.fleet_share,
        "evidence": pages.href(cell),
    }


def _ring_json(decision: RingDecision, pages: _Pages) -> dict[str, object]:
    ring = decision.ring
    return {
        "name": ring.name,
        "description": ring.description,
        "may_enter": decision.may_enter,
        "requirement_met": decision.met,
        "reasons": decision.reasons,
        "requires": {
            "cells": "all"
            if ring.require.cells is None
            else [s.describe() for s in ring.require.cells],
            "fleet_share": ring.require.fleet_share,
            "block": sorted(v.value for v in ring.block),
            "boot_regression": ring.boot_regression,
            "cost_regression": dict(ring.cost_regression) if ring.cost_regression else None,
            "repeats": ring.repeats,
        },
        "passing_fleet_share": decision.passing_share,
        "blocking_fleet_share": decision.blocking_fleet.share
        if decision.blocking_fleet.known
        else None,
        "blocking": [_cell_json(c, pages) for c in decision.blocking],
        "allowed": [_cell_json(c, pages) for c in decision.allowed],
    }


def _tested(run: RunInfo) -> dict[str, object]:
    """What was tested, with what: ``None`` for what the run did not record."""
    return {
        "run": run.id,
        "started": run.started.isoformat(),
        "finished": run.finished.isoformat() if run.finished else None,
        "complete": run.finished is not None,
        "candidate": {
            "name": run.candidate_name,
            "version": run.candidate_version,
            "sha256": run.candidate_sha256 or None,
        },
        "matrix": [{"path": m, "sha256": run.matrix_sha256.get(m) or None} for m in run.matrix],
        "compatlab_version": run.compatlab_version or None,
        "hosts": list(run.hosts),
    }


def signoff_document(
    signoff: SignOff, run: RunInfo, cells: Sequence[CellResult], *, written: datetime
) -> dict[str, object]:
    """signoff.json as a JSON-ready dict."""
    pages = _Pages(run, cells)
    return {
        "schema": SCHEMA,
        "decision": "go" if signoff.go else "no-go",
        "target": signoff.target,
        "may_enter": signoff.may_enter,
        "headline": headline(signoff),
        "problems": signoff.problems,
        "blast_radius": {
            "failing_cells": len(signoff.failing),
            "fleet_share": signoff.failing_fleet.share if signoff.failing_fleet.known else None,
            "cells_without_share": signoff.failing_fleet.unknown,
            "words": _blast(signoff),
            "tested_fleet_share": signoff.tested_fleet.share
            if signoff.tested_fleet.known
            else None,
        },
        "rings": [_ring_json(r, pages) for r in signoff.rings],
        "tested": _tested(run),
        "policy": {"path": str(signoff.policy.path), "sha256": signoff.policy.sha256},
        "signed_off": {"written": written.isoformat(), "compatlab_version": _version()},
    }


def _version() -> str:
    try:
        return metadata.version("compatlab")
    except metadata.PackageNotFoundError:
        return NOT_RECORDED


# -- signoff.html ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    check: CellCheck
    href: str
    share: str


def _percent(share: float | None) -> str:
    if share is None:
        return "—"
    return f"{share:.1%}" if share >= 0.001 or share == 0 else "<0.1%"


def _shown(value: object) -> object:
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return printable(cap_text(value, _VALUE_LIMIT))


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=True,  # reasons hold guest text
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_shown,
    )


def render_html(
    signoff: SignOff, run: RunInfo, cells: Sequence[CellResult], *, written: datetime
) -> str:
    """The sign-off page."""
    pages = _Pages(run, cells)

    def rows(checks: Sequence[CellCheck]) -> list[_Row]:
        return [
            _Row(c, pages.href(c.cell), _percent(c.cell.fleet_share)) for c in checks[:_SHOWN_CELLS]
        ]

    tested = _tested(run)
    return (
        _environment()
        .get_template("signoff.html.j2")
        .render(
            signoff=signoff,
            run=run,
            headline=headline(signoff),
            blast=_blast(signoff),
            tested=tested,
            not_recorded=NOT_RECORDED,
            tested_share=signoff.tested_fleet.describe() if signoff.tested_fleet.known else "",
            rings=[
                {
                    "decision": d,
                    "blocking": rows(d.blocking),
                    "more": max(0, len(d.blocking) - _SHOWN_CELLS),
                    "allowed": rows(d.allowed),
                    "passing": _percent(d.passing_share),
                    "blocking_share": d.blocking_fleet.describe() if d.blocking_fleet.known else "",
                }
                for d in signoff.rings
            ],
            qualify=pages.qualify,
            written=written.strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
            version=_version(),
        )
    )


def write_signoff(
    run_dir: Path, signoff: SignOff, run: RunInfo, cells: Sequence[CellResult], *, written: datetime
) -> tuple[Path, Path]:
    """Write signoff.html and signoff.json into ``run_dir``; their paths."""
    document = signoff_document(signoff, run, cells, written=written)
    text = json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    json_path = write_text_atomic(run_dir / SIGNOFF_JSON, text)
    html = render_html(signoff, run, cells, written=written)
    return write_text_atomic(run_dir / SIGNOFF_HTML, html), json_path
