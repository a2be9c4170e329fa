"""A cell run N times (``--matrix-repeat N``): one result that never hides a failure.

Intermittent failures are what a single run misses: a race in a driver that crashes one boot in
five. Each repeat is a whole run of the cell (its own VM, attempts and baseline reruns); the
cell's result is its *worst* repeat by :data:`compatlab.model.SEVERITY` (the first of equals),
with every repeat's verdict, attribution, seconds and crash signature in ``repeats`` -- so a
cell that failed once in N is reported as that failure, never as pass, and the report turns
the ratio into a failure rate with its interval (:mod:`compatlab.report.stats`).

Each repeat's evidence has a folder of its own: repeat 1 keeps the cell's folder, repeat k
uses ``<cell folder>.repeat-k`` beside it (:func:`evidence_prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from compatlab.model import CellResult, Repeat

__all__ = ["MAX_REPEAT", "combine", "evidence_prefix"]

#: More runs of one cell than this is a typo, not a plan (each is a whole VM run).
MAX_REPEAT = 100


def evidence_prefix(folder: str, repeat: int) -> str:
    """The evidence folder of repeat ``repeat`` of a cell whose folder is ``folder``."""
    return folder if repeat <= 1 else f"{folder}.repeat-{repeat}"


def combine(results: Sequence[CellResult]) -> CellResult:
    """The cell's one result from its repeats, in the order they were asked for."""
    if not results:
        raise ValueError("a cell has at least one run")
    if len(results) == 1:
        return results[0]
    worst = min(results, key=lambda r: r.verdict.severity)  # min: stable, first of equals
    repeats = [
        Repeat(
            verdict=r.verdict,
            attribution=r.attribution,
            seconds=r.seconds,
            signature=r.bugcheck.signature if r.bugcheck is not None else "",
        )
        for r in results
    ]
    failed = sum(1 for r in results if r.verdict.is_failure)
    reason = worst.reason
    if failed:
        reason = f"{reason} (failed {failed} of {len(results)} runs)"
    return replace(worst, repeats=repeats, reason=reason, seconds=sum(r.seconds for r in results))
