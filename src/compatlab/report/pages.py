"""``cells/<name>.html``: each cell's evidence page, named and written.

A run writes a cell's page as soon as the cell is reported (:mod:`.live`), while the next cells'
VMs boot; ``compatlab report`` writes every page again, on several processes if asked
(:func:`write_pages`, ``--jobs N``). Both write the same page, byte for byte: a page is a
function of the run's header (its id and candidate), the cell, the cell's history in earlier
runs of the same matrix files (:meth:`~compatlab.report.history.History.cell`) and its name --
of nothing a later cell changes.

Names (:class:`PageNames`): the cell id made file-name-safe, with the matrix file's name in
front when the run has more than one matrix file, capped at :data:`SLUG_LENGTH` characters and
unique even on a case-blind file system, given in the order results.json keeps the cells (the
order they were reported in).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from jinja2 import Environment

from compatlab.model import CellResult
from compatlab.report.changes import CellHistory
from compatlab.report.evidence import evidence
from compatlab.report.index import TAGS, PlannedCell
from compatlab.report.markup import NO_SCRIPT, environment
from compatlab.report.results import RunInfo, write_text_atomic

__all__ = [
    "PARALLEL_PAGES",
    "SLUG_LENGTH",
    "PageNames",
    "cell_slug",
    "page_href",
    "page_html",
    "page_path",
    "qualified",
    "write_page",
    "write_pages",
]

log = logging.getLogger("compatlab.report")

SLUG_LENGTH = 120  # characters of a page's file name, without ".html": far below NAME_MAX
PARALLEL_PAGES = 400  # pages worth starting processes for (~0.5 s each to start on 2 cores)
_CHUNK = 100  # pages a process is given at a time


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


def qualified(
    run: RunInfo, cells: Iterable[CellResult] = (), planned: Iterable[PlannedCell] = ()
) -> bool:
    """Whether page names carry the matrix file: the run has more than one (its own list, its
    cells' and its planned cells'), as ``compatlab signoff`` reckons when it links to them."""
    return len(set(run.matrix) | {c.matrix for c in cells} | {p.matrix for p in planned}) > 1


class PageNames:
    """The page names of a run's cells, given in the order the cells come.

    A cell reported again (a retry) keeps its name; another cell whose name differs only in
    unsafe characters or in case gets ``-2``, ``-3`` ...
    """

    def __init__(self, qualify: bool) -> None:
        self.qualify = qualify
        self._names: dict[tuple[str, str], str] = {}
        self._used: set[str] = set()

    def name(self, cell: CellResult) -> str:
        """The cell's page name (its file's, without ``.html``)."""
        key = (cell.matrix, cell.id)
        found = self._names.get(key)
        if found is None:
            found = self._names[key] = self._fresh(cell)
        return found

    def names(self, cells: Sequence[CellResult]) -> list[str]:
        """Each cell's name, in order; a cell given twice (a hand-edited results.json) gets a
        page of its own each time."""
        seen: set[tuple[str, str]] = set()
        out = []
        for cell in cells:
            key = (cell.matrix, cell.id)
            out.append(self._fresh(cell) if key in seen else self.name(cell))
            seen.add(key)
        return out

    def _fresh(self, cell: CellResult) -> str:
        slug = base = cell_slug(cell, qualify=self.qualify)
        n = 1
        # Ids differing only in unsafe characters, or in case (a case-blind file system).
        while slug.lower() in self._used:
            n += 1
            slug = f"{base}-{n}"
        self._used.add(slug.lower())
        return slug


def page_path(run_dir: Path, name: str) -> Path:
    return run_dir / "cells" / f"{name}.html"


def page_href(name: str) -> str:
    """The link to a cell's page from a file in the run folder (index.html, signoff.html)."""
    return f"cells/{name}.html"


def page_html(
    env: Environment, run_dir: Path, run: RunInfo, cell: CellResult, history: CellHistory | None
) -> str:
    """A cell's evidence page."""
    return env.get_template("cell.html.j2").render(
        run=run,
        cell=cell,
        tag=TAGS[cell.verdict.value],
        policy=NO_SCRIPT,
        **evidence(run_dir, cell, history),
    )


def write_page(path: Path, html: str) -> None:
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


# A page to write: the cell, its page name and its history.
Job = tuple[CellResult, str, CellHistory | None]


def write_pages(
    run_dir: Path, run: RunInfo, jobs: Sequence[Job], *, processes: int | None = None
) -> None:
    """Write the pages of ``jobs``: on up to ``processes`` processes (None: one per CPU) when
    there are :data:`PARALLEL_PAGES` or more, else in this one.

    More than one pays only where CPUs are idle: on this project's shared 2-CPU machine two
    processes took 0.9 to 1.8 times as long as one for 10,000 pages (``benchmarks/render.py``),
    so the callers' default is one. The processes are spawned, not forked: the pytest controller
    that may call this has threads, and a forked child can inherit a lock one of them holds.
    """
    started = time.perf_counter()
    workers = min(processes or os.cpu_count() or 1, -(-len(jobs) // _CHUNK))
    if workers <= 1 or len(jobs) < PARALLEL_PAGES:
        _write_chunk(run_dir, run, jobs)
    else:
        chunks = [jobs[n : n + _CHUNK] for n in range(0, len(jobs), _CHUNK)]
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for _ in pool.map(_write_chunk, [run_dir] * len(chunks), [run] * len(chunks), chunks):
                pass  # map raises the first error a process met
    # benchmarks/render.py reads this: the pages' share of a render.
    log.debug(
        "compatlab: %d evidence pages in %.3f s on %d processes",
        len(jobs),
        time.perf_counter() - started,
        max(workers, 1),
    )


_ENVIRONMENT: list[Environment] = []  # a process's own, its templates compiled once


def _write_chunk(run_dir: Path, run: RunInfo, jobs: Sequence[Job]) -> None:
    if not _ENVIRONMENT:
        _ENVIRONMENT.append(environment())
    env = _ENVIRONMENT[0]
    for cell, name, history in jobs:
        write_page(page_path(run_dir, name), page_html(env, run_dir, run, cell, history))
