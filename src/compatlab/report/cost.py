"""The candidate's cost on the guest, as the report shows it (``_cost.html.j2``).

On a cell's page, a small table (:func:`cost_table`): per metric, the baseline bake against the
candidate's worst bake, the difference and its share, boot time included, and the rows over
:data:`FLAG_SHARE` marked. On the index, the cells with a metric over :data:`FLAG_SHARE`
(:func:`cost_flags`), so a candidate that passes everywhere but costs 40% more CPU is seen
without opening every cell. The flag is the report's own line; what blocks a ring is the
policy's ``cost_regression`` (``compatlab signoff``). What is measured, and how each side is
taken, is :mod:`compatlab.cost`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compatlab.cost import JUDGED, Comparison, Metric, bakes_from_json, cell_cost, format_value
from compatlab.model import CellResult

__all__ = ["FLAG_ROWS", "FLAG_SHARE", "CostFlag", "CostFlags", "CostRow", "CostTable"]

# The index flags a cell whose candidate exceeds its baseline by more than this share in a
# metric a ring may judge (and by more than that metric's noise floor).
FLAG_SHARE = 0.25
FLAG_ROWS = 500  # flagged cells listed on the index; the rest are counted


@dataclass(frozen=True)
class CostRow:
    label: str
    baseline: str
    candidate: str
    difference: str  # "+1.2 MB/s", "—"
    change: str  # "+42%", "new" (from 0), "—"
    worst: str  # "boot 2": the candidate's bake the value is from, "" when none
    over: bool  # over FLAG_SHARE
    judged: bool  # a ring's cost_regression may hold the candidate to it
    note: str  # why it is not compared, "" when it is


@dataclass(frozen=True)
class CostTable:
    rows: list[CostRow]
    bakes: str  # what was compared: "1 baseline bake against 2 with the candidate"
    left_out: list[str]  # "with the candidate, boot 2: cut short by a failure of the guest"
    share: float  # FLAG_SHARE, for the page's words


@dataclass(frozen=True)
class CostFlag:
    cell: CellResult
    href: str
    over: str  # "CPU +42% (0.30 vs 0.21 CPU-s/s, boot 2); …"


@dataclass(frozen=True)
class CostFlags:
    rows: list[CostFlag]
    more: int  # flagged cells not listed (over FLAG_ROWS)
    measured: int  # cells with a comparison at all
    share: float


def _row(metric: Metric, share: float) -> CostRow:
    unit = metric.spec.unit
    delta = metric.delta
    if delta is None:
        difference = change = "—"
    else:
        difference = ("+" if delta > 0 else "") + format_value(unit, delta)
        change = "—" if not metric.measured else _change(metric)
    return CostRow(
        label=metric.spec.label,
        baseline=format_value(unit, metric.baseline),
        candidate=format_value(unit, metric.candidate),
        difference=difference,
        change=change,
        # Which bake with the candidate the figure is from, where it rose: the one to look at.
        worst=f"boot {metric.worst}" if metric.worst is not None and (delta or 0) > 0 else "",
        over=metric.spec.judged and metric.over(share),
        judged=metric.spec.judged,
        note=metric.note,
    )


def _change(metric: Metric) -> str:
    if metric.change is not None:
        return f"{metric.change:+.0%}"
    return "new" if metric.delta else "±0%"  # from a baseline of 0


def cost_table(cell: CellResult, share: float = FLAG_SHARE) -> CostTable | None:
    """The cell page's table; None when the cell has no bake to compare on one side."""
    comparison = cell_cost(cell)
    if comparison is None:
        return None
    rows = [_row(m, share) for m in (*comparison.metrics, comparison.boot)]
    n, m = comparison.baseline_bakes, comparison.candidate_bakes
    bakes = f"{n} baseline bake{'s' if n != 1 else ''} against {m} with the candidate"
    return CostTable(rows, bakes, _left_out(cell), share)


def _left_out(cell: CellResult) -> list[str]:
    """Why each bake that was not compared was left out (its note comes from results.json)."""
    sides = {"baseline": "baseline", "boots": "with the candidate"}
    out = []
    for phase in cell.phases:
        side = sides.get(str(phase.get("phase")))
        if side is None or phase.get("cost") is None:
            continue
        try:
            windows = bakes_from_json(phase["cost"])
        except ValueError:
            continue
        out += [f"{side}, boot {w.boot}: {w.note or 'no rate'}" for w in windows if not w.usable]
    return out


def _flagged(comparison: Comparison, share: float) -> list[Metric]:
    return comparison.over(dict.fromkeys(JUDGED, share))


def cost_flags(
    cells: Sequence[CellResult],
    hrefs: dict[int, str],
    share: float = FLAG_SHARE,
    limit: int = FLAG_ROWS,
) -> CostFlags:
    """The index's list: cells with a judged metric over ``share``, the largest rise first.
    ``hrefs``: each cell's page, by ``id(cell)``."""
    found: list[tuple[float, CostFlag]] = []
    measured = 0
    for cell in cells:
        comparison = cell_cost(cell)
        if comparison is None:
            continue
        measured += 1
        over = _flagged(comparison, share)
        if not over:
            continue
        worst = max((m.change if m.change is not None else float("inf")) for m in over)
        text = "; ".join(m.describe() for m in over)
        found.append((worst, CostFlag(cell, hrefs[id(cell)], text)))
    found.sort(key=lambda item: (-item[0], item[1].cell.id))
    return CostFlags(
        [flag for _, flag in found[:limit]], max(0, len(found) - limit), measured, share
    )
