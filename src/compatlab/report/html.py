"""``index.html`` and ``cells/<slug>.html``: the report a release manager signs off from.

Self-contained pages -- inline CSS and SVG, one small inline script (the index's filters),
nothing fetched -- rendered with Jinja2, autoescape on: cell ids, reasons, serial output and
installer output are all guest- or user-controlled text. A Content-Security-Policy in each page
allows no script but the index's own (by its hash), so a value that got past the escaping still
could not run.

The index is a header (candidate, run, what was tested, a go/no-go line with the blast radius),
what changed since the last run of the same matrix (from ``reports/history.sqlite``), filters, a
grid of builds x hardware with one chip per product set, the failures grouped by crash signature,
and the failing cells; each chip links to the cell's evidence page (:mod:`.evidence`), which a
run writes as the cell ends (:mod:`.live`) and a re-render writes again, on several processes
if asked (:mod:`.pages`). The shared environment and policy are :mod:`.markup`; the chips and rows,
written in Python for speed, :mod:`.tables`.

It renders whatever a results.json that parses holds: infinite, NaN or huge numbers and naive
timestamps are shown as they are; every value reaches the page without terminal escapes or
control characters and at most :data:`VALUE_LIMIT` characters long; page names are capped at
:data:`SLUG_LENGTH` characters and unique.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

from jinja2 import Template

from compatlab.errors import StorageError
from compatlab.model import CellResult, Verdict
from compatlab.report.changes import CellHistory, HistoryView
from compatlab.report.cost import cost_flags
from compatlab.report.evidence import GUEST_LINE, OUTPUT_EXCERPT, serial_tail
from compatlab.report.history import History, default_history
from compatlab.report.index import (
    INDEX_REASON,
    Chip,
    PlannedCell,
    Row,
    changed,
    facets,
    grids,
    groups,
    rows,
)
from compatlab.report.junit import write_junit
from compatlab.report.markup import VALUE_LIMIT, environment, policy, script
from compatlab.report.pages import (
    SLUG_LENGTH,
    PageNames,
    cell_slug,
    page_href,
    qualified,
    write_pages,
)
from compatlab.report.results import RunInfo, load_results, write_text_atomic
from compatlab.report.summary import Summary, duration, natural, summarize, when
from compatlab.report.tables import FAILING_COLUMNS, chips_html, failing_rows_html, rate_html

__all__ = [
    "GUEST_LINE",
    "INDEX_FILE",
    "OUTPUT_EXCERPT",
    "SLUG_LENGTH",
    "VALUE_LIMIT",
    "PlannedCell",
    "Summary",
    "cell_slug",
    "load_history",
    "render_html",
    "render_report",
    "serial_tail",
    "summarize",
]

log = logging.getLogger("compatlab.report")

INDEX_FILE = "index.html"


def load_history(
    run_dir: Path,
    run: RunInfo,
    cells: Sequence[CellResult],
    history: Path | bool,
    known: Mapping[tuple[str, str], CellHistory] | None = None,
) -> HistoryView:
    """Record the run in the history and read back what changed; ``history`` is the file,
    True for ``reports/history.sqlite`` beside the run folder, False for none; ``known``, the
    cells' histories read already (:meth:`History.view`).

    A history that cannot be written or read costs the report only its history section: the
    page says why, and the rest renders.
    """
    if history is False:
        return HistoryView(note="no history kept for this report")
    path = default_history(run_dir) if history is True else history
    try:
        with History(path) as store:
            store.record(run, cells)
            return store.view(run, cells, known)
    except StorageError as exc:
        log.warning("compatlab: %s", exc)
        return HistoryView(path=str(path), note=f"history unavailable: {exc}")


def render_html(
    run_dir: Path,
    run: RunInfo,
    cells: Sequence[CellResult],
    *,
    planned: Iterable[PlannedCell] = (),
    history: Path | bool = False,
    processes: int | None = 1,
    names: PageNames | None = None,
    written: Mapping[str, CellResult] | None = None,
    known: Mapping[tuple[str, str], CellHistory] | None = None,
    made: Mapping[int, tuple[Chip, Row | None]] | None = None,
) -> Path:
    """Write index.html and one evidence page per cell into ``run_dir``; the index's path.

    ``planned`` lists the matrix's cells so the ones without a result show as not run.
    ``history``: see :func:`load_history` (recording the run there first). ``processes``:
    how many write the pages (:func:`~compatlab.report.pages.write_pages`). ``names`` and
    ``written`` are a :class:`~compatlab.report.live.LiveReport`'s: the pages' names so far,
    and the pages it wrote as their cells ended (by name, with the cell), which are not
    written again; ``known`` the histories it read for them, ``made`` their chips and rows in
    the index (by ``id(cell)``).
    """
    planned = list(planned)
    started = time.perf_counter()
    past = load_history(run_dir, run, cells, history, known)
    log.debug("compatlab: history in %.3f s", time.perf_counter() - started)
    names = names or PageNames(qualified(run, cells, planned))
    slugs = names.names(cells)
    written = written or {}
    jobs = [
        (cell, name, past.of(cell.matrix, cell.id))
        for cell, name in zip(cells, slugs, strict=True)
        if written.get(name) is not cell
    ]
    write_pages(run_dir, run, jobs, processes=processes)
    hrefs = {id(cell): page_href(name) for cell, name in zip(cells, slugs, strict=True)}
    started = time.perf_counter()
    index = write_index(run_dir, run, cells, planned, past, hrefs, made)
    log.debug("compatlab: index.html in %.3f s", time.perf_counter() - started)
    return index


@cache
def _index_template() -> Template:
    """index.html.j2, compiled once a process (a tenth of a second)."""
    env = environment()
    env.filters["chips_html"] = chips_html
    env.filters["rate_html"] = rate_html
    return env.get_template("index.html.j2")


def write_index(
    run_dir: Path,
    run: RunInfo,
    cells: Sequence[CellResult],
    planned: Sequence[PlannedCell],
    past: HistoryView,
    hrefs: dict[int, str],
    made: Mapping[int, tuple[Chip, Row | None]] | None = None,
) -> Path:
    """index.html, given what the history says, each cell's page and the chips and rows made
    already (by ``id(cell)``)."""
    made = made or {}
    chips = {key: chip for key, (chip, _) in made.items()}
    failing_rows = {key: row for key, (_, row) in made.items() if row is not None}
    ran = {(c.matrix, c.id) for c in cells}
    not_run = sum(1 for p in planned if (p.matrix, p.id) not in ran)
    counts = Counter(c.verdict.value for c in cells)
    # A naive and an aware time cannot be subtracted: both are shown, the duration is not.
    comparable = run.finished is not None and (run.finished.utcoffset() is None) == (
        run.started.utcoffset() is None
    )
    took = (
        duration((run.finished - run.started).total_seconds())
        if run.finished is not None and comparable
        else ""
    )
    code, source = script()
    multi_matrix = qualified(run, cells, planned)
    # Sorted once: the failing cells' table and the crash groups keep this order (and sorting
    # a sorted list again is one pass).
    failing = [c for c in cells if c.verdict.is_failure]
    failing.sort(key=lambda c: (c.verdict.severity, natural(c.id)))
    html = _index_template().render(
        run=run,
        started=when(run.started),
        finished=when(run.finished),
        duration=took,
        summary=summarize(cells, not_run),
        counts=[(v.value, counts.get(v.value, 0)) for v in Verdict] + [("not_run", not_run)],
        total=len(cells) + not_run,
        grids=grids(cells, hrefs, planned, past, chips),
        failing=failing_rows_html(
            rows(failing, hrefs, past, failing_rows), multi_matrix=multi_matrix
        ),
        failing_count=len(failing),
        failing_columns=FAILING_COLUMNS,
        reason_limit=INDEX_REASON,
        groups=groups(failing, hrefs),
        facets=facets(cells, planned, past),
        history=past,
        changed=changed(cells, hrefs, past),
        cost=cost_flags(cells, hrefs),
        multi_matrix=multi_matrix,
        cell_seconds=duration(sum(c.seconds for c in cells)),
        script=code,
        policy=policy(source),
    )
    return write_text_atomic(run_dir / INDEX_FILE, html, durable=False)


def render_report(
    run_dir: Path,
    *,
    planned: Iterable[PlannedCell] = (),
    history: Path | bool = True,
    processes: int | None = 1,
) -> Path:
    """Re-render index.html, the evidence pages and junit.xml from ``run_dir``/results.json,
    recording the run in the history (once, however often it is rendered); the pages on
    ``processes`` processes (None: one per CPU).

    What ``compatlab report RUN_DIR`` does; the index's path.
    """
    results = load_results(run_dir)
    write_junit(run_dir, results.run, results.cells)
    return render_html(
        run_dir,
        results.run,
        results.cells,
        planned=planned,
        history=history,
        processes=processes,
    )
