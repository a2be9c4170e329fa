"""``index.html`` as data for ``index.html.j2``: the builds x hardware grids of chips, the
filters' choices, the failing cells, the crash groups and what changed since the last run.

Every chip carries its cell's axis values as ``data-`` attributes, which the page's one small
script filters on (verdict, build, hardware, product, change); a table's row carries only its
cell's id and follows its cell's chip. The search box matches a cell's id, verdict and its row
in the failing cells (signature, reason), read from the page rather than written into every chip
again. The filter state lives in the URL's fragment, so a filtered view can be linked and
survives the back button.

The index is bounded per cell: a chip per cell (its tooltip the id and verdict, not the
reason), a row per failing cell whose reason is cut at :data:`INDEX_REASON` characters, no trend
strip in those rows (each cell's page has its own), and at most :data:`CHANGED_ROWS` cells in
"since the last run" (the rest are counted, and the filter shows them all). How the chips and
rows are written is :mod:`.tables`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from compatlab.model import CellResult, Verdict
from compatlab.report.changes import Change, HistoryView
from compatlab.report.charts import TrendMark, trend_marks
from compatlab.report.crashes import Group, crash_signatures, group_failures
from compatlab.report.stats import FailureRate, failure_rate
from compatlab.report.summary import natural, products_label

__all__ = [
    "CHANGED_ROWS",
    "INDEX_REASON",
    "TAGS",
    "Changed",
    "Chip",
    "Facets",
    "Grid",
    "PlannedCell",
    "Row",
    "changed",
    "chip",
    "facets",
    "failing_row",
    "grids",
    "groups",
    "rows",
]

# Short tags beside the colour, so the grid reads without colour vision too.
TAGS: dict[str, str] = {
    "crash": "CRASH",
    "boot_loop": "LOOP",
    "hang": "HANG",
    "install_failed": "INSTALL",
    "check_failed": "CHECK",
    "rollback_failed": "ROLLBACK",
    "infra_error": "INFRA",
    "pass": "PASS",
    "not_run": "NOT RUN",
}
# Marks beside a chip for what changed since the last run (the quiet changes get none).
CHANGE_MARKS: dict[str, str] = {
    Change.NEW_FAILURE: "NEW",
    Change.FLAKY: "FLAKY",
    Change.FIXED: "FIXED",
}
INDEX_REASON = 300  # characters of a failing cell's reason in its row; its page has it whole
CHANGED_ROWS = 200  # cells listed under "since the last run"; the rest are counted


@dataclass(frozen=True)
class PlannedCell:
    """A cell the matrix holds, so cells that never ran still show (as white chips)."""

    matrix: str
    build: str
    hardware: str
    products: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.build}/{self.hardware}/{'+'.join(self.products) or 'none'}"


# Chip and Row are not frozen: an index makes 10,000 of each, and a frozen dataclass's
# __init__ costs twice a plain one's.
@dataclass(slots=True)
class Chip:
    cell_id: str
    label: str
    verdict: str
    tag: str
    href: str | None
    title: str
    code: str
    build: str
    hardware: str
    products: str  # "+"-joined, or "none"
    change: str  # a Change value, or ""
    rate: str  # "2/5" for a repeated cell, else ""
    html: str = ""  # its markup, where it was written ahead (as its cell ended)

    @property
    def mark(self) -> str:
        return CHANGE_MARKS.get(self.change, "")


@dataclass
class Grid:
    matrix: str
    builds: list[str]
    hardware: list[str]
    chips: dict[tuple[str, str], list[Chip]] = field(default_factory=dict)


@dataclass(slots=True)
class Row:
    """A failing cell in the index's table."""

    cell: CellResult
    href: str
    change: str
    rate: FailureRate | None
    signature: str
    trend: tuple[TrendMark, ...]  # only where a table shows it ("since the last run")
    html: str = ""  # its markup in the failing cells, where it was written ahead


@dataclass(frozen=True)
class Changed:
    """The cells "since the last run" lists, and how many more changed than it lists."""

    rows: list[Row]
    more: int


def _change(history: HistoryView, cell: CellResult) -> str:
    found = history.of(cell.matrix, cell.id)
    return found.change.value if found else ""


def chip(cell: CellResult, href: str, change: str) -> Chip:
    """A cell's chip in the grid; ``change`` is its Change value since the last run, or ""."""
    rate = failure_rate(cell)
    label = products_label(cell.products)
    return Chip(
        cell_id=cell.id,
        label=label,
        verdict=cell.verdict.value,
        tag=TAGS[cell.verdict.value],
        href=href,
        title=f"{cell.id}: {cell.verdict.value}",
        code=cell.bugcheck.code if cell.bugcheck else "",
        build=cell.build,
        hardware=cell.hardware,
        products=label,
        change=change,
        rate=rate.ratio if rate else "",
    )


def grids(
    cells: Sequence[CellResult],
    hrefs: dict[int, str],
    planned: Sequence[PlannedCell],
    history: HistoryView,
    made: Mapping[int, Chip] | None = None,
) -> list[Grid]:
    """The grids of chips, one per matrix file; ``made`` holds chips made already, by
    ``id(cell)``."""
    made = made or {}
    by_matrix: dict[str, Grid] = {}
    seen: set[tuple[str, str]] = set()

    def place(matrix: str, build: str, hardware: str, chip: Chip) -> None:
        g = by_matrix.setdefault(matrix, Grid(matrix, [], []))
        if build not in g.builds:
            g.builds.append(build)
        if hardware not in g.hardware:
            g.hardware.append(hardware)
        g.chips.setdefault((build, hardware), []).append(chip)

    for cell in cells:
        seen.add((cell.matrix, cell.id))
        found = made.get(id(cell)) or chip(cell, hrefs[id(cell)], _change(history, cell))
        place(cell.matrix, cell.build, cell.hardware, found)
    for plan in planned:
        if (plan.matrix, plan.id) in seen:
            continue
        label = products_label(plan.products)
        planned_chip = Chip(
            plan.id, label, "not_run", TAGS["not_run"], None, plan.id, "",
            plan.build, plan.hardware, label, "", "",
        )  # fmt: skip
        place(plan.matrix, plan.build, plan.hardware, planned_chip)
    for g in by_matrix.values():
        if not planned:  # no matrix order to keep: completion order means nothing, sort
            g.builds.sort(key=natural)
            g.hardware.sort(key=natural)
        for chips in g.chips.values():
            chips.sort(key=lambda c: (c.label != "none", natural(c.label)))
    return list(by_matrix.values())


def failing_row(cell: CellResult, href: str, change: str) -> Row:
    """A failing cell's row; ``change`` is its Change value since the last run, or ""."""
    return Row(cell, href, change, failure_rate(cell), ", ".join(crash_signatures(cell)), ())


def _row(cell: CellResult, href: str, history: HistoryView, *, trend: bool = False) -> Row:
    found = history.of(cell.matrix, cell.id)
    row = failing_row(cell, href, found.change.value if found else "")
    if found and trend:
        row.trend = trend_marks(found.trend)
    return row


def rows(
    cells: Sequence[CellResult],
    hrefs: dict[int, str],
    history: HistoryView,
    made: Mapping[int, Row] | None = None,
) -> list[Row]:
    """The failing cells, worst verdict first; ``made`` holds rows made already, by
    ``id(cell)``."""
    made = made or {}
    failing = sorted(
        (c for c in cells if c.verdict.is_failure),
        key=lambda c: (c.verdict.severity, natural(c.id)),
    )
    return [made.get(id(c)) or _row(c, hrefs[id(c)], history) for c in failing]


def changed(
    cells: Sequence[CellResult],
    hrefs: dict[int, str],
    history: HistoryView,
    limit: int = CHANGED_ROWS,
) -> Changed:
    """The cells a reader of the history must see: new failures, then flaky, then fixed; at
    most ``limit`` of them, each with its trend."""
    order = {change: n for n, change in enumerate(CHANGE_MARKS)}
    notable = [c for c in cells if _change(history, c) in order]
    notable.sort(key=lambda c: (order[_change(history, c)], natural(c.id)))
    rows = [_row(c, hrefs[id(c)], history, trend=True) for c in notable[:limit]]
    return Changed(rows, len(notable) - len(rows))


def groups(cells: Sequence[CellResult], hrefs: dict[int, str]) -> list[tuple[Group, str]]:
    """The failures grouped by signature, each with its example cell's page."""
    failing = [c for c in cells if c.verdict.is_failure]
    found = group_failures(failing, order=lambda c: (c.verdict.severity, natural(c.id)))
    return [(g, hrefs[id(g.example)]) for g in found]


@dataclass(frozen=True)
class Facets:
    """The choices of the index's filters: only values the report holds."""

    verdicts: list[str]
    builds: list[str]
    hardware: list[str]
    products: list[str]
    changes: list[tuple[str, str]]  # value, label


def facets(
    cells: Sequence[CellResult], planned: Sequence[PlannedCell], history: HistoryView
) -> Facets:
    ran = {(c.matrix, c.id) for c in cells}
    not_run = [p for p in planned if (p.matrix, p.id) not in ran]
    present = {c.verdict.value for c in cells} | ({"not_run"} if not_run else set())
    every: list[CellResult | PlannedCell] = [*cells, *not_run]
    products = {p for c in every for p in c.products}
    none = any(not c.products for c in every)
    return Facets(
        verdicts=[v.value for v in Verdict if v.value in present]
        + (["not_run"] if not_run else []),
        builds=sorted({c.build for c in every}, key=natural),
        hardware=sorted({c.hardware for c in every}, key=natural),
        products=sorted(products, key=natural) + (["none"] if none else []),
        changes=[(change.value, change.label) for change, _ in history.counts()],
    )
