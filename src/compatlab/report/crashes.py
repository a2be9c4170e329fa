"""Failing cells grouped by how they failed: what a release manager and a lab engineer triage by.

A crash's signature is the stable title of the crash (``Bugcheck.signature``, e.g. "BUG: kernel
NULL pointer dereference in acme_sensor_apply_channel [acme_sensor]"); where a result has none
(written before signatures existed) the bugcheck code and name stand in. Cells that failed
without a crash (a hang, a failed install) group by verdict and attribution.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from compatlab.model import Bugcheck, CellResult, Verdict

__all__ = ["Group", "crash_signatures", "group_failures", "signature_of"]


def signature_of(bugcheck: Bugcheck) -> str:
    """The crash's signature, or its code and name where the result has no signature."""
    return bugcheck.signature or f"{bugcheck.code} {bugcheck.name}".strip()


def crash_signatures(cell: CellResult) -> list[str]:
    """Every crash signature a cell saw: its verdict's, then its repeats' (in order, once each)."""
    found = [signature_of(cell.bugcheck)] if cell.bugcheck else []
    found += [r.signature for r in cell.repeats if r.signature]
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Group:
    """Failing cells that failed the same way."""

    signature: str  # "" for a group of cells without a crash
    bugcheck: Bugcheck | None  # the first cell's, for its code and name
    verdicts: tuple[tuple[str, int], ...]  # verdict, cells; worst first
    attributions: tuple[tuple[str, int], ...]
    cells: int
    common: str  # what every cell of the group shares
    example: CellResult

    @property
    def verdict(self) -> str:
        """The worst verdict of the group."""
        return self.verdicts[0][0]

    @property
    def code(self) -> str:
        """The bugcheck's code and name, where the signature does not already say them."""
        if self.bugcheck is None:
            return ""
        code = f"{self.bugcheck.code} {self.bugcheck.name}".strip()
        return "" if code == self.signature else code


def common_ground(cells: Sequence[CellResult]) -> str:
    """What every cell of a group shares: the likely trigger, in the lab's words."""
    if len(cells) < 2:
        return ""  # one cell shares everything with itself: the example link says it all
    parts = []
    shared = set(cells[0].products).intersection(*(c.products for c in cells[1:]))
    if shared:
        parts.append("every cell has " + " + ".join(sorted(shared)))
    for axis in ("build", "hardware"):
        values = {getattr(c, axis) for c in cells}
        if len(values) == 1:
            parts.append(f"only {axis} {values.pop()}")
    return "; ".join(parts)


def group_failures(
    failing: Sequence[CellResult], order: Callable[[CellResult], Any] = lambda c: c.id
) -> list[Group]:
    """Groups of ``failing`` cells, largest first within the worst verdict first.

    A crash groups by signature across verdicts (the same bug is a crash in one cell and a boot
    loop in another); other failures by verdict and attribution.
    """
    groups: dict[tuple[str, ...], list[CellResult]] = {}
    for cell in failing:
        if cell.bugcheck is not None:
            key: tuple[str, ...] = ("crash", signature_of(cell.bugcheck))
        else:
            attribution = cell.attribution.value if cell.attribution else ""
            key = ("other", cell.verdict.value, attribution)
        groups.setdefault(key, []).append(cell)
    out = []
    for key, cells in groups.items():
        cells = sorted(cells, key=order)
        verdicts = Counter(c.verdict for c in cells)
        who = Counter(c.attribution.value if c.attribution else "—" for c in cells)
        out.append(
            Group(
                signature=key[1] if key[0] == "crash" else "",
                bugcheck=cells[0].bugcheck,
                verdicts=tuple(
                    (v.value, n) for v, n in sorted(verdicts.items(), key=lambda i: i[0].severity)
                ),
                attributions=tuple(who.most_common()),
                cells=len(cells),
                common=common_ground(cells),
                example=cells[0],
            )
        )
    return sorted(out, key=lambda g: (Verdict(g.verdict).severity, -g.cells, g.signature))
