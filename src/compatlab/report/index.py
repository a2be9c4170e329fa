"""``index.html`` as data for ``index.html.j2``: the builds x hardware grids of chips, the
filters' choices, the failing cells, the crash groups and what changed since the last run.

Every chip and failing-cell row carries its axis values as ``data-`` attributes, which the
page's one small script filters on (verdict, build, hardware, product, change, text); the
filter state lives in the URL's fragment, so a filtered view can be linked and survives the
back button.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from compatlab.model import CellResult, Verdict
from compatlab.report.changes import Change, HistoryView
from compatlab.report.charts import TrendMark, trend_marks
from compatlab.report.crashes import Group, crash_signatures, group_failures
from compatlab.report.stats import FailureRate, failure_rate
from compatlab.report.summary import natural, products_label

__all__ = [
    "TAGS",
    "Chip",
    "Facets",
    "Grid",
    "PlannedCell",
    "Row",
    "changed",
    "facets",
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
SEARCH_REASON = 200  # characters of a failing cell's reason its search text holds


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


@dataclass(frozen=True)
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
    search: str  # what the search box matches, lower case

    @property
    def mark(self) -> str:
        return CHANGE_MARKS.get(self.change, "")


@dataclass
class Grid:
    matrix: str
    builds: list[str]
    hardware: list[str]
    chips: dict[tuple[str, str], list[Chip]] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """A failing cell in the index's table."""

    cell: CellResult
    href: str
    change: str
    rate: FailureRate | None
    signature: str
    search: str
    trend: tuple[TrendMark, ...]


def _search(cell: CellResult) -> str:
    parts = [cell.id]
    if cell.verdict.is_failure:
        parts += [cell.verdict.value, *crash_signatures(cell), cell.reason[:SEARCH_REASON]]
    return " ".join(parts).lower()


def _change(history: HistoryView, cell: CellResult) -> str:
    found = history.of(cell.matrix, cell.id)
    return found.change.value if found else ""


def grids(
    cells: Sequence[CellResult],
    hrefs: dict[int, str],
    planned: Sequence[PlannedCell],
    history: HistoryView,
) -> list[Grid]:
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
        reason = f" — {cell.reason}" if cell.reason else ""
        rate = failure_rate(cell)
        chip = Chip(
            cell_id=cell.id,
            label=products_label(cell.products),
            verdict=cell.verdict.value,
            tag=TAGS[cell.verdict.value],
            href=hrefs[id(cell)],
            title=f"{cell.id}: {cell.verdict.value}{reason}",
            code=cell.bugcheck.code if cell.bugcheck else "",
            build=cell.build,
            hardware=cell.hardware,
            products=products_label(cell.products),
            change=_change(history, cell),
            rate=rate.ratio if rate else "",
            search=_search(cell),
        )
        place(cell.matrix, cell.build, cell.hardware, chip)
    for plan in planned:
        if (plan.matrix, plan.id) in seen:
            continue
        label = products_label(plan.products)
        chip = Chip(
            plan.id, label, "not_run", TAGS["not_run"], None, plan.id, "",
            plan.build, plan.hardware, label, "", "", plan.id.lower(),
        )  # fmt: skip
        place(plan.matrix, plan.build, plan.hardware, chip)
    for g in by_matrix.values():
        if not planned:  # no matrix order to keep: completion order means nothing, sort
            g.builds.sort(key=natural)
            g.hardware.sort(key=natural)
        for chips in g.chips.values():
            chips.sort(key=lambda c: (c.label != "none", natural(c.label)))
    return list(by_matrix.values())


def _row(cell: CellResult, href: str, history: HistoryView) -> Row:
    found = history.of(cell.matrix, cell.id)
    return Row(
        cell=cell,
        href=href,
        change=found.change.value if found else "",
        rate=failure_rate(cell),
        signature=", ".join(crash_signatures(cell)),
        search=_search(cell),
        trend=trend_marks(found.trend) if found else (),
    )


def rows(cells: Sequence[CellResult], hrefs: dict[int, str], history: HistoryView) -> list[Row]:
    """The failing cells, worst verdict first."""
    failing = sorted(
        (c for c in cells if c.verdict.is_failure),
        key=lambda c: (c.verdict.severity, natural(c.id)),
    )
    return [_row(c, hrefs[id(c)], history) for c in failing]


def changed(cells: Sequence[CellResult], hrefs: dict[int, str], history: HistoryView) -> list[Row]:
    """The cells a reader of the history must see: new failures, then flaky, then fixed."""
    order = {change: n for n, change in enumerate(CHANGE_MARKS)}
    notable = [c for c in cells if _change(history, c) in order]
    notable.sort(key=lambda c: (order[_change(history, c)], natural(c.id)))
    return [_row(c, hrefs[id(c)], history) for c in notable]


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
