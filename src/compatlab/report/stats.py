"""The numbers a release manager reads beside the verdicts: how often a repeated cell failed
(with a confidence interval, because 1 failure in 5 runs says little about the true rate), and
how much of the fleet the failing cells stand for. Pure functions of the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from compatlab.model import Attribution, CellResult, Verdict

__all__ = [
    "Z_95",
    "BlastRadius",
    "FailureRate",
    "blast_radius",
    "failure_rate",
    "percent",
    "wilson_interval",
]

# The standard normal quantile for a two-sided 95% interval.
Z_95 = 1.959963984540054


def wilson_interval(failures: int, runs: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a proportion of ``failures`` in ``runs``.

    Unlike the textbook p ± z·sqrt(p(1-p)/n), it stays inside [0, 1] and does not collapse to a
    point at 0 or n failures: 0 failures in 5 runs still allows a true rate up to about 43%.
    """
    if runs <= 0:
        raise ValueError("a failure rate needs at least one run")
    if not 0 <= failures <= runs:
        raise ValueError(f"{failures} failures in {runs} runs")
    p = failures / runs
    z2 = z * z
    denominator = 1 + z2 / runs
    centre = (p + z2 / (2 * runs)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / runs + z2 / (4 * runs * runs))
    # At 0 and n failures the bound is exactly 0 or 1; floating point would miss it by 1e-17.
    low = 0.0 if failures == 0 else max(0.0, centre - half)
    high = 1.0 if failures == runs else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class FailureRate:
    """``failures`` of ``runs`` repeats failed; ``low``-``high`` is the 95% Wilson interval.

    Repeats the lab failed (``infra_error``) are no verdict on the candidate and are left out of
    both counts; ``infra`` says how many there were.
    """

    failures: int
    runs: int
    low: float
    high: float
    infra: int = 0

    @property
    def ratio(self) -> str:
        return f"{self.failures}/{self.runs}"

    @property
    def interval(self) -> str:
        return f"{percent(self.low)} to {percent(self.high)}"


def failure_rate(cell: CellResult) -> FailureRate | None:
    """The failure rate of a cell that ran more than once, else None."""
    if len(cell.repeats) < 2:
        return None
    judged = [r for r in cell.repeats if r.verdict is not Verdict.INFRA_ERROR]
    infra = len(cell.repeats) - len(judged)
    if not judged:
        return None
    failures = sum(1 for r in judged if r.verdict.is_failure)
    low, high = wilson_interval(failures, len(judged))
    return FailureRate(failures, len(judged), low, high, infra)


def percent(share: float) -> str:
    """A share as a whole percentage; shares that round to 0 or 100 but are not say so."""
    if not math.isfinite(share):
        return f"{share}"
    value = share * 100
    if 0 < value < 0.5:
        return "<1%"
    if 99.5 <= value < 100:
        return ">99%"
    return f"{value:.0f}%"


@dataclass(frozen=True)
class BlastRadius:
    """The cells the candidate fails and the share of the fleet they stand for.

    ``share`` sums the failing cells' ``fleet_share``; None when no cell of the run has one
    (the matrix gives no fleet weights). ``unknown`` failing cells have no share, so with any
    of them the share is a lower bound.
    """

    cells: int
    share: float | None
    unknown: int

    def phrase(self) -> str:
        """``3 failing cells, about 22% of the fleet``."""
        noun = "cell" if self.cells == 1 else "cells"
        head = f"{self.cells} failing {noun}"
        if self.share is None:
            return head
        about = "at least" if self.unknown else "about"
        tail = f" ({self.unknown} without a fleet share)" if self.unknown else ""
        return f"{head}, {about} {percent(self.share)} of the fleet{tail}"


def blast_radius(cells: Sequence[CellResult]) -> BlastRadius:
    """What the candidate's failures cost: cells it fails (not ``baseline``, not ``infra``)."""
    failing = [
        c
        for c in cells
        if c.verdict.is_failure
        and c.verdict is not Verdict.INFRA_ERROR
        and c.attribution not in (Attribution.BASELINE, Attribution.INFRA)
    ]
    if all(c.fleet_share is None for c in cells):
        return BlastRadius(len(failing), None, 0)
    shares = [c.fleet_share for c in failing]
    known = sum(s for s in shares if s is not None)
    return BlastRadius(len(failing), known, sum(1 for s in shares if s is None))
