"""The index's two long parts as HTML: the grid's chips (one per cell) and the failing cells'
rows (one per failing cell), from :mod:`compatlab.report.index`'s data.

Written in Python rather than as template loops for the reason :mod:`.svg` is: a 10,000-cell
index holds 10,000 chips and up to as many rows, and a template spends several times as long
per element. Every value goes through :func:`compatlab.report.markup.text` (cleaned, bounded,
escaped) exactly as a template's ``{{ value }}`` would; the reason, guest text, is cut at
:data:`~compatlab.report.index.INDEX_REASON` characters with a visible mark, as guest text is
everywhere in the report.

What the rows leave out, each cell's page has: the whole reason, the trend of its last runs, the
event timeline and the boot chart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from markupsafe import Markup

from compatlab.report.evidence import marked
from compatlab.report.index import INDEX_REASON, TAGS, Chip, Row
from compatlab.report.markup import text
from compatlab.report.stats import FailureRate

__all__ = [
    "CHUNK_ROWS",
    "FAILING_COLUMNS",
    "chip_html",
    "chips_html",
    "failing_rows_html",
    "rate_html",
    "row_html",
]


@lru_cache(maxsize=4096)
def _word(value: str) -> str:
    """:func:`text` of a value many chips share (a build, a verdict, a product set)."""
    return text(value)


def chips_html(chips: Iterable[Chip]) -> Markup:
    """The chips of one grid cell (a build on a hardware profile), one per product set."""
    return Markup("".join(chip.html or chip_html(chip) for chip in chips))


def chip_html(chip: Chip) -> str:
    """One chip: a link to its cell's page, or a plain chip for a cell that did not run."""
    verdict = _word(chip.verdict)
    label = _word(chip.label)
    attrs = (
        f' title="{text(chip.title)}" data-cell="{text(chip.cell_id)}" data-v="{verdict}"'
        f' data-b="{_word(chip.build)}" data-h="{_word(chip.hardware)}"'
        f' data-p="{_word(chip.products)}" data-c="{_word(chip.change)}"'
    )
    inner = f'<span class="tag">{_word(chip.tag)}</span><span class="label">{label}</span>'
    if chip.rate:
        inner += f'<span class="rate">{text(chip.rate)}</span>'
    if chip.code:
        inner += f'<span class="code">{text(chip.code)}</span>'
    if chip.mark:
        inner += f'<span class="mark m-{text(chip.change)}">{text(chip.mark)}</span>'
    if chip.href:
        return f'<a class="chip v-{verdict}" href="{text(chip.href)}"{attrs}>{inner}</a>\n'
    return f'<span class="chip v-{verdict}"{attrs}>{inner}</span>\n'


def rate_html(rate: FailureRate | None) -> str:
    """A repeated cell's failure ratio and its interval (the ``rate`` macro of _charts.html.j2)."""
    if rate is None:
        return ""
    infra = f" ({rate.infra} more the lab failed)" if rate.infra else ""
    title = (
        f"failed in {rate.failures} of {rate.runs} runs{infra}; "
        f"95% Wilson interval of the failure rate: {rate.interval}"
    )
    return (
        f'<span class="rate" title="{text(title)}">{text(rate.ratio)} '
        f'<span class="muted">({text(rate.interval)})</span></span>'
    )


# The failing cells' columns, the same in every chunk (table-layout: fixed takes them from here).
FAILING_COLUMNS = Markup(
    '<colgroup><col style="width:80px"><col style="width:95px"><col style="width:18%">'
    '<col style="width:20%"><col style="width:95px"><col style="width:105px"><col>'
    '<col style="width:75px"></colgroup>'
)
CHUNK_ROWS = 200  # failing cells per table: what the browser lays out when it comes into view
_ROW_PX = 44  # about a row's height, for the size of a chunk not laid out yet


def failing_rows_html(rows: Sequence[Row], *, multi_matrix: bool) -> Markup:
    """The failing cells' tables, :data:`CHUNK_ROWS` rows each: verdict, attribution, cell,
    signature, repeats, change since the last run, reason, time. A row carries only its cell's
    id: the filters hide it with its cell's chip, whose page it links to.

    Each table sits in a ``<div>`` the page's style gives ``content-visibility: auto``: the
    browser lays out only the tables in view, on load and after a filter.
    """
    out = []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        out.append(
            f'<div style="contain-intrinsic-size: auto {len(chunk) * _ROW_PX}px">'
            f'<table class="data failing">{FAILING_COLUMNS}<tbody>\n'
            f"{_rows(chunk, multi_matrix)}</tbody></table></div>\n"
        )
    return Markup("".join(out))


def _rows(rows: Sequence[Row], multi_matrix: bool) -> str:
    return "".join(row.html or row_html(row, multi_matrix=multi_matrix) for row in rows)


def row_html(row: Row, *, multi_matrix: bool) -> str:
    """One failing cell's row (``multi_matrix``: its cell named with its matrix file)."""
    cell = row.cell
    verdict = _word(cell.verdict.value)
    name = f"{cell.matrix}::{cell.id}" if multi_matrix else cell.id
    signature = (
        f'<strong>{_word(cell.bugcheck.code)}</strong><span class="name">'
        f"{_word(row.signature)}</span>"
        if cell.bugcheck
        else "—"
    )
    change = (
        f'<span class="change c-{_word(row.change)}">{_word(row.change.replace("_", " "))}</span>'
        if row.change
        else ""
    )
    return (
        f'<tr data-cell="{text(cell.id)}">'
        f'<td><span class="badge v-{verdict}">{_word(TAGS[cell.verdict.value])}</span></td>'
        f"<td>{_word(cell.attribution.value) if cell.attribution else '—'}</td>"
        f'<td class="mono cellid"><a href="{text(row.href)}">{text(name)}</a></td>'
        f'<td class="mono sig">{signature}</td>'
        f"<td>{rate_html(row.rate) or '—'}</td>"
        f"<td>{change}</td>"
        f'<td class="reason">{marked(cell.reason, INDEX_REASON)}</td>'
        f'<td class="num">{cell.seconds:.1f} s</td></tr>\n'
    )
