"""The report of a run in progress: each cell's evidence page written when the cell is reported,
the rest -- index.html and junit.xml, which depend on every cell -- at the end.

A cell's page costs a few milliseconds; a run has minutes of VM boots between its cells, so the
pages are written then, and the end of a 10,000-cell run writes only the index (the summary,
the grid, the crash groups, what changed) instead of 10,000 pages. Each cell's junit testcase,
its history (read as its page is written) and its chip and row in the index are kept too, so
the end joins them. The page
written here is the one ``compatlab report`` writes again from results.json, byte for byte
(:mod:`.pages` says why).

A page that cannot be written when its cell ends (a full disk, a history locked past its
timeout) is not lost: :meth:`LiveReport.finish` writes every page it did not write, as a
re-render would, and so does a page whose run header or name changed since.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from compatlab.model import CellResult
from compatlab.report.changes import CellHistory
from compatlab.report.history import History, default_history
from compatlab.report.html import render_html
from compatlab.report.index import Chip, PlannedCell, Row, chip, failing_row
from compatlab.report.junit import testcase_xml, write_junit
from compatlab.report.markup import environment
from compatlab.report.pages import PageNames, page_href, page_html, page_path, qualified, write_page
from compatlab.report.results import RunInfo
from compatlab.report.tables import chip_html, row_html

__all__ = ["LiveReport"]

log = logging.getLogger("compatlab.report")


class LiveReport:
    """Writes a run's evidence pages as its cells are reported, and junit.xml and index.html at
    the end.

    ``run`` is the run's header as results.json has it (a resumed run's: its first start);
    ``planned`` the matrices' cells; ``done`` the cells a resumed run finished before, in
    results.json's order (their pages are written at the end, as :func:`render_html` would).
    ``history``: the history file, True for ``reports/history.sqlite``, False for none.
    Thread-safe.
    """

    def __init__(
        self,
        run_dir: Path,
        run: RunInfo,
        planned: Sequence[PlannedCell] = (),
        *,
        done: Sequence[CellResult] = (),
        history: Path | bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.run = run
        self.history = history
        self.names = PageNames(qualified(run, done, planned))
        for cell in done:
            self.names.name(cell)  # their names come first, as in results.json
        # Each page written (under self.run), with the cell and history it was written from.
        self._written: dict[str, tuple[CellResult, CellHistory | None]] = {}
        # By page name: each cell's junit testcase, and its chip and failing row in the index.
        self._cases: dict[str, str] = {}
        self._made: dict[str, tuple[Chip, Row | None]] = {}
        self._env = environment()
        self._store: History | None = None
        self._lock = threading.Lock()

    def add(self, cell: CellResult) -> Path | None:
        """Write ``cell``'s evidence page; its path, or None when it is left for the end."""
        with self._lock:
            name = self.names.name(cell)
            path = page_path(self.run_dir, name)
            self._written.pop(name, None)  # a retried cell: its earlier page is not its page
            try:
                history = self._cell_history(cell)
                case = testcase_xml(self.run, cell)
                made = self._index_parts(cell, name, history)
                write_page(path, page_html(self._env, self.run_dir, self.run, cell, history))
            except Exception as exc:
                # Not even a bug here may stop a run at its cell 900: this runs in a pytest
                # hook, where an exception ends the session. finish() writes the page as a
                # re-render would, and raises there what it meets.
                log.warning("compatlab: %s: evidence page left for the end: %r", cell.id, exc)
                return None
            self._written[name] = (cell, history)
            self._cases[name] = case
            self._made[name] = made
            return path

    def _index_parts(
        self, cell: CellResult, name: str, history: CellHistory | None
    ) -> tuple[Chip, Row | None]:
        """The cell's chip and (failing) row in the index, as write_index would make them."""
        href = page_href(name)
        change = history.change.value if history else ""
        made = chip(cell, href, change)
        made.html = chip_html(made)
        if not cell.verdict.is_failure:
            return made, None
        row = failing_row(cell, href, change)
        row.html = row_html(row, multi_matrix=self.names.qualify)
        return made, row

    def _cell_history(self, cell: CellResult) -> CellHistory | None:
        if self.history is False:
            return None
        if self._store is None:
            path = default_history(self.run_dir) if self.history is True else self.history
            # Used under self._lock only, from whichever thread reports a cell.
            self._store = History(path, threads=True)
        return self._store.cell(self.run, cell)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def finish(
        self, run: RunInfo, cells: Sequence[CellResult], planned: Iterable[PlannedCell] = ()
    ) -> Path:
        """Write junit.xml and index.html (and any page not written when its cell ended) for
        ``cells``, the run's results in results.json's order; ``run`` is its header now. The
        index's path.

        Records the run in the history first, as :func:`~compatlab.report.html.render_html`
        does; ``planned`` lists the cells that have no result, so they show as not run.
        """
        self.close()
        planned = list(planned)
        names = self.names
        if qualified(run, cells, planned) != names.qualify:
            # A cell of a matrix the run did not list: every page gets its qualified name, and
            # the pages written under the other go.
            names = PageNames(not names.qualify)
            for name in self._written:
                page_path(self.run_dir, name).unlink(missing_ok=True)
        # The pages were written under self.run: they stand if the header's key is the same.
        same = names is self.names and _page_key(self.run) == _page_key(run)
        kept = [(name, cell, history) for name, (cell, history) in self._written.items() if same]
        started = time.perf_counter()
        write_junit(
            self.run_dir, run, cells, {id(cell): self._cases[name] for name, cell, _ in kept}
        )
        log.debug("compatlab: junit.xml in %.3f s", time.perf_counter() - started)
        return render_html(
            self.run_dir,
            run,
            cells,
            planned=planned,
            history=self.history,
            names=names,
            written={name: cell for name, cell, _ in kept},
            # What the pages say of each cell's history, the index says too.
            known={(c.matrix, c.id): h for _, c, h in kept if h is not None},
            made={id(cell): self._made[name] for name, cell, _ in kept},
        )


def _page_key(run: RunInfo) -> tuple[object, ...]:
    """What a page shows of the run (its id and candidate) and what its history is read
    against (the matrix files and the start): a page written under a header with another key
    is written again."""
    return (run.id, run.candidate_key, run.matrix, run.started)
