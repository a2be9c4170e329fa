"""``index.html`` and ``cells/<slug>.html``: the report a release manager signs off from.

Self-contained pages -- inline CSS and SVG, one small inline script (the index's filters),
nothing fetched -- rendered with Jinja2, autoescape on: cell ids, reasons, serial output and
installer output are all guest- or user-controlled text. A Content-Security-Policy in each page
allows no script but the index's own (by its hash), so a value that got past the escaping still
could not run.

The index is a header (candidate, run, what was tested, a go/no-go line with the blast radius),
what changed since the last run of the same matrix (from ``reports/history.sqlite``), filters, a
grid of builds x hardware with one chip per product set, the failures grouped by crash signature,
and the failing cells; each chip links to the cell's evidence page (:mod:`.evidence`).

It renders whatever a results.json that parses holds: infinite, NaN or huge numbers and naive
timestamps are shown as they are; every value reaches the page without terminal escapes or
control characters and at most :data:`VALUE_LIMIT` characters long; page names are capped at
:data:`SLUG_LENGTH` characters and unique.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from compatlab.errors import StorageError
from compatlab.model import CellResult, Verdict
from compatlab.report.changes import HistoryView
from compatlab.report.cost import cost_flags, cost_table
from compatlab.report.evidence import GUEST_LINE, OUTPUT_EXCERPT, evidence, marked, serial_tail
from compatlab.report.history import History, default_history
from compatlab.report.index import TAGS, PlannedCell, changed, facets, grids, groups, rows
from compatlab.report.junit import write_junit
from compatlab.report.results import RunInfo, load_results, write_text_atomic
from compatlab.report.summary import Summary, duration, summarize, when
from compatlab.report.svg import boots_svg, strip_svg, trend_svg
from compatlab.text import cap_text, printable

__all__ = [
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
_TEMPLATES = Path(__file__).parent / "templates"
SLUG_LENGTH = 120  # characters of a page's file name, without ".html": far below NAME_MAX
VALUE_LIMIT = 16 * 1024  # characters of any other value shown on a page
_POLICY = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    "script-src {script}; base-uri 'none'; form-action 'none'"
)


def cell_slug(cell: CellResult, *, qualify: bool = False) -> str:
    """File-name-safe name of a cell's evidence page (``qualify`` adds the matrix file).

    At most :data:`SLUG_LENGTH` characters: a longer name is cut and ends with a hash of the
    whole one, so two long ids that differ only at their end still get two pages.
    """
    base = f"{Path(cell.matrix).stem}--{cell.id}" if qualify and cell.matrix else cell.id
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "cell"
    if len(slug) <= SLUG_LENGTH:
        return slug
    digest = hashlib.sha256(base.encode("utf-8", errors="replace")).hexdigest()[:10]
    return f"{slug[: SLUG_LENGTH - len(digest) - 1].rstrip('._-')}-{digest}"


def _slugs(cells: Sequence[CellResult], qualify: bool) -> dict[int, str]:
    slugs: dict[int, str] = {}
    used: set[str] = set()
    for cell in cells:
        slug = base = cell_slug(cell, qualify=qualify)
        n = 1
        # Ids differing only in unsafe characters, or in case (a case-blind file system).
        while slug.lower() in used:
            n += 1
            slug = f"{base}-{n}"
        used.add(slug.lower())
        slugs[id(cell)] = slug
    return slugs


def _shown(value: object) -> object:
    """Every ``{{ value }}`` of a page: text without control characters (guest text carries
    terminal escapes), bounded. Escaping follows, by autoescape."""
    # Most values are plain str: one check, not two.
    if value.__class__ is not str and (isinstance(value, Markup) or not isinstance(value, str)):
        return value
    if len(value) <= VALUE_LIMIT and value.isprintable():
        return value  # most values: nothing to cut or clean (isprintable: no control at all)
    return printable(cap_text(value, VALUE_LIMIT))


def _script() -> tuple[Markup, str]:
    """The index's script, and its CSP source: the only script a page may run."""
    text = (_TEMPLATES / "filters.js").read_text(encoding="utf-8")
    if "</" in text:
        raise AssertionError("filters.js must not hold '</': it is inlined in a <script>")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return Markup(text), f"'sha256-{digest}'"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=True,  # every template: reasons and serial output are hostile text
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_shown,
    )
    env.globals["tags"] = TAGS
    env.filters["guest"] = lambda text, limit=GUEST_LINE: marked(str(text), limit)
    env.filters["percent_share"] = lambda share: f"{share * 100:.1f}%"
    env.filters["strip_svg"] = strip_svg
    env.filters["boots_svg"] = boots_svg
    env.filters["trend_svg"] = trend_svg
    env.filters["cost_table"] = cost_table
    return env


def _write_page(path: Path, html: str) -> None:
    """Write an evidence page, unless the file already holds exactly that page.

    A re-render (``compatlab report``, a resumed run) changes few pages, and replacing a file
    costs more than writing a new one: ext4 flushes the new file's data when it is renamed over
    an old one (auto_da_alloc), 1-2 ms a page, while reading the old one back is 0.05 ms.
    """
    data = html.encode("utf-8", errors="backslashreplace")  # as write_text_atomic encodes
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass  # no page yet, or an unreadable one: write it
    write_text_atomic(path, html, durable=False)


def load_history(
    run_dir: Path, run: RunInfo, cells: Sequence[CellResult], history: Path | bool
) -> HistoryView:
    """Record the run in the history and read back what changed; ``history`` is the file,
    True for ``reports/history.sqlite`` beside the run folder, False for none.

    A history that cannot be written or read costs the report only its history section: the
    page says why, and the rest renders.
    """
    if history is False:
        return HistoryView(note="no history kept for this report")
    path = default_history(run_dir) if history is True else history
    try:
        with History(path) as store:
            store.record(run, cells)
            return store.view(run, cells)
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
) -> Path:
    """Write index.html and one evidence page per cell into ``run_dir``; the index's path.

    ``planned`` lists the matrix's cells so the ones without a result show as not run.
    ``history``: see :func:`load_history` (recording the run there first).
    """
    planned = list(planned)
    past = load_history(run_dir, run, cells, history)
    qualify = len({c.matrix for c in cells} | {p.matrix for p in planned}) > 1
    slugs = _slugs(cells, qualify)
    env = _environment()
    none = _POLICY.format(script="'none'")
    page = env.get_template("cell.html.j2")
    started = time.perf_counter()
    for cell in cells:
        html = page.render(
            run=run,
            cell=cell,
            tag=TAGS[cell.verdict.value],
            policy=none,
            **evidence(run_dir, cell, past.of(cell.matrix, cell.id)),
        )
        _write_page(run_dir / "cells" / f"{slugs[id(cell)]}.html", html)
    # benchmarks/render.py reads this: the pages' share of a render.
    log.debug("compatlab: %d evidence pages in %.3f s", len(cells), time.perf_counter() - started)

    hrefs = {key: f"cells/{slug}.html" for key, slug in slugs.items()}
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
    script, source = _script()
    html = env.get_template("index.html.j2").render(
        run=run,
        started=when(run.started),
        finished=when(run.finished),
        duration=took,
        summary=summarize(cells, not_run),
        counts=[(v.value, counts.get(v.value, 0)) for v in Verdict] + [("not_run", not_run)],
        total=len(cells) + not_run,
        grids=grids(cells, hrefs, planned, past),
        failing=rows(cells, hrefs, past),
        groups=groups(cells, hrefs),
        facets=facets(cells, planned, past),
        history=past,
        changed=changed(cells, hrefs, past),
        cost=cost_flags(cells, hrefs),
        multi_matrix=qualify,
        cell_seconds=duration(sum(c.seconds for c in cells)),
        script=script,
        policy=_POLICY.format(script=source),
    )
    return write_text_atomic(run_dir / INDEX_FILE, html, durable=False)


def render_report(
    run_dir: Path, *, planned: Iterable[PlannedCell] = (), history: Path | bool = True
) -> Path:
    """Re-render index.html, the evidence pages and junit.xml from ``run_dir``/results.json,
    recording the run in the history (once, however often it is rendered).

    What ``compatlab report RUN_DIR`` does; the index's path.
    """
    results = load_results(run_dir)
    write_junit(run_dir, results.run, results.cells)
    return render_html(run_dir, results.run, results.cells, planned=planned, history=history)
