"""Which rings an update may enter, from a run's results and a rollout policy. Pure: no files.

Each cell is judged once per ring (:func:`judge`), on every run it had (a cell run N times with
``--matrix-repeat N`` carries N ``repeats``; otherwise its verdict is its one run):

- **fails**: a run ended in a verdict the ring blocks, attributed to the candidate (or not
  attributed, or ``unconfirmed``: the lab could not clear it) -- once in N is enough; or its
  slowest boot with the candidate is over the ring's ``boot_regression`` times the baseline boot;
  or a cost metric of its worst bake with the candidate (:mod:`compatlab.cost`: CPU, guest
  memory, disk read, disk written) exceeds the baseline bake by more than the ring's
  ``cost_regression`` share, and by more than the metric's noise floor;
- **not tested**: no run says anything about the update -- the lab failed (``infra_error``), or
  the configuration fails without the candidate too (``baseline``) -- or fewer runs than the
  ring's ``repeats``, or no boot time to hold to the ring's ``boot_regression``, or no metric
  of the ring's ``cost_regression`` measured on both sides (a metric one side lacks, such as
  guest memory without a balloon driver, is left out while others are measured);
- **allowed**: a failure the ring does not block (``check_failed`` by default);
- **pass**.

A ring's requirement is met when every cell it names (``cells: all``, or its selectors) passes or
is allowed, and, with ``fleet_share: X``, when those cells stand for at least X of the share of
the fleet that all the run's cells stand for. The share is taken of what was tested, because a
pairwise run's cells are a sample that stands for part of the fleet only; the sign-off states
that part too. A ring may be entered when its requirement is met and every ring before it may
be entered. A run that has not finished, or has no cell, opens no ring.

The blast radius is ring-independent: the cells that fail with the candidate (any failing verdict
but the lab's, not attributed to the baseline), and the share of the fleet they stand for
(:func:`compatlab.fleet.share_of`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from compatlab.cost import cell_cost
from compatlab.fleet import Configuration, FleetTotal, configuration, share_of
from compatlab.model import Attribution, CellResult, Verdict
from compatlab.signoff.policy import Policy, Ring

__all__ = [
    "CellCheck",
    "RingDecision",
    "SignOff",
    "boot_ratio",
    "decide",
    "fails_with_candidate",
    "judge",
]

Status = Literal["pass", "allowed", "fails", "not_tested"]
_NOT_THE_UPDATE = (Attribution.INFRA, Attribution.BASELINE)


@dataclass(frozen=True)
class CellCheck:
    """One cell judged for one ring, and why, in a line."""

    cell: CellResult
    status: Status
    why: str

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "allowed")


@dataclass(frozen=True)
class RingDecision:
    """One ring: may the update enter it, and what stands in the way."""

    ring: Ring
    met: bool  # its own requirement, whatever the rings before it say
    may_enter: bool
    reasons: list[str]  # why not, one line each; empty when it may be entered
    blocking: list[CellCheck]  # the cells that keep it closed, worst first
    allowed: list[CellCheck]  # failures it lets through
    passing_share: float | None  # share of the tested fleet the passing cells stand for
    blocking_fleet: FleetTotal


@dataclass(frozen=True)
class SignOff:
    """The decision on a run: per ring, the target ring's go, and the blast radius."""

    policy: Policy
    target: str
    rings: list[RingDecision]
    failing: list[CellResult]  # cells that fail with the candidate, any ring
    failing_fleet: FleetTotal
    tested_fleet: FleetTotal
    problems: list[str] = field(default_factory=list)  # run-wide: not finished, no cell

    @property
    def go(self) -> bool:
        return any(r.may_enter for r in self.rings if r.ring.name == self.target)

    @property
    def may_enter(self) -> list[str]:
        return [r.ring.name for r in self.rings if r.may_enter]


def fails_with_candidate(cell: CellResult) -> bool:
    """A failing verdict in any run of the cell that is not the lab's and not the baseline's."""
    return any(
        verdict.is_failure and verdict is not Verdict.INFRA_ERROR and who not in _NOT_THE_UPDATE
        for verdict, who in [(cell.verdict, cell.attribution), *_runs(cell)]
    )


def boot_ratio(cell: CellResult) -> tuple[float, float, float] | None:
    """``(ratio, slowest boot with the candidate, baseline boot)`` in seconds, or None when the
    cell lacks one of them. Several baseline boots: their median."""
    baseline = [b.seconds for b in cell.boots if b.phase == "baseline" and b.outcome == "completed"]
    after = [b.seconds for b in cell.boots if b.phase == "boots" and b.outcome == "completed"]
    if not baseline or not after:
        return None
    base = statistics.median(baseline)
    if not (math.isfinite(base) and base > 0 and all(math.isfinite(s) for s in after)):
        return None  # a clock gone wrong is no measurement
    return max(after) / base, max(after), base


def judge(cell: CellResult, ring: Ring) -> CellCheck:
    """The cell's status for ``ring`` (see the module docstring)."""
    runs = _runs(cell)
    counted = len(runs)
    failed = [(v, who) for v, who in runs if _kind(v, who, ring) == "fails"]
    if not failed and _kind(cell.verdict, cell.attribution, ring) == "fails":
        failed = [(cell.verdict, cell.attribution)]  # repeats that contradict the verdict
    if failed:
        verdict, who = failed[0]
        times = f" in {len(failed)} of {counted} runs" if counted > 1 else ""
        reason = f": {cell.reason}" if cell.reason else ""
        return CellCheck(cell, "fails", f"{verdict.value}{times} ({_who(who)}){reason}")
    judged = [(v, who) for v, who in runs if _kind(v, who, ring) != "not_tested"]
    if not judged:
        verdict, who = runs[-1]
        if verdict is Verdict.INFRA_ERROR or who is Attribution.INFRA:
            why = "the lab failed (infra_error): the update was not tested"
        else:
            why = f"{verdict.value} without the candidate too (baseline): nothing to judge"
        return CellCheck(cell, "not_tested", why + (f"; {cell.reason}" if cell.reason else ""))
    if len(judged) < ring.repeats:
        return CellCheck(
            cell,
            "not_tested",
            f"{len(judged)} run{'s' if len(judged) != 1 else ''} with a verdict; the ring needs "
            f"{ring.repeats} (--matrix-repeat {ring.repeats})",
        )
    if ring.boot_regression is not None:
        measured = boot_ratio(cell)
        if measured is None:
            return CellCheck(cell, "not_tested", "boot time not measured (baseline or candidate)")
        ratio, after, base = measured
        if ratio > ring.boot_regression:
            return CellCheck(
                cell,
                "fails",
                f"boot time {ratio:.2f}x the baseline ({after:.1f} s vs {base:.1f} s), over the "
                f"{ring.boot_regression:g}x allowed",
            )
    if ring.cost_regression is not None:
        costly = _cost(cell, ring.cost_regression)
        if costly is not None:
            return costly
    allowed = [v for v, _who in judged if v.is_failure]
    if allowed:
        return CellCheck(cell, "allowed", f"{allowed[0].value}, which this ring does not block")
    return CellCheck(cell, "pass", "pass")


def decide(
    policy: Policy,
    cells: Sequence[CellResult],
    *,
    complete: bool = True,
    target: str | None = None,
) -> SignOff:
    """Judge every ring of ``policy`` on ``cells``. ``complete``: the run has finished.

    Raises :class:`~compatlab.errors.PolicyError` at the policy's ``fleet_share`` when a ring
    asks for a share of the fleet and the run's cells carry none: the policy cannot be applied.
    ``target`` (a ring name, default the policy's) is the ring whose go :attr:`SignOff.go` is.
    """
    target = target or policy.target
    policy.ring(target)  # KeyError for a ring the policy does not have: the caller's to say
    problems = []
    if not complete:
        problems.append("the run has not finished: its results are partial")
    if not cells:
        problems.append("no cell has a result")
    decisions: list[RingDecision] = []
    open_so_far = True
    for ring in policy.rings:
        decision = _ring(ring, cells, problems, open_so_far)
        decisions.append(decision)
        open_so_far = decision.may_enter
    failing = [c for c in cells if fails_with_candidate(c)]
    return SignOff(
        policy=policy,
        target=target,
        rings=decisions,
        failing=failing,
        failing_fleet=_fleet(failing),
        tested_fleet=_fleet(cells),
        problems=problems,
    )


def _cost(cell: CellResult, limits: Mapping[str, float]) -> CellCheck | None:
    """The cell held to a ring's ``cost_regression``: a failing or untested check, or None."""
    comparison = cell_cost(cell)
    measured = comparison.judged(limits) if comparison is not None else []
    if comparison is None or not measured:
        return CellCheck(cell, "not_tested", "guest cost not measured (baseline or candidate)")
    over = comparison.over(limits)
    if not over:
        return None
    shares = sorted({limits[m.key] for m in over})
    allowed = " / ".join(f"{share:.0%}" for share in shares)
    said = "; ".join(m.describe() for m in over)
    return CellCheck(
        cell, "fails", f"guest cost over the baseline: {said}, over the {allowed} allowed"
    )


# -- one ring -------------------------------------------------------------------------------------


def _ring(
    ring: Ring, cells: Sequence[CellResult], problems: list[str], open_so_far: bool
) -> RingDecision:
    checks = [judge(cell, ring) for cell in cells]
    reasons = list(problems)
    blocking: dict[int, CellCheck] = {}
    require = ring.require
    if require.cells is None:
        blocking.update((id(c.cell), c) for c in checks if not c.ok)
    else:
        for selector in require.cells:
            picked = [c for c in checks if selector.matches(c.cell)]
            if not picked:
                reasons.append(
                    f"no cell of the run matches {selector.describe()} (policy line "
                    f"{selector.place.line}): that part of the requirement was not tested"
                )
            blocking.update((id(c.cell), c) for c in picked if not c.ok)
    bad = [c for c in checks if id(c.cell) in blocking]
    if bad:
        fails = sum(1 for c in bad if c.status == "fails")
        untested = len(bad) - fails
        parts = [f"{fails} failing" if fails else "", f"{untested} not tested" if untested else ""]
        reasons.append(f"{' and '.join(p for p in parts if p)} of the cells that must pass")
    passing_share = None
    if require.fleet_share is not None:
        passing_share = _passing_share(ring, checks)
        if passing_share < require.fleet_share:
            reasons.append(
                f"the cells that pass stand for {passing_share:.1%} of the fleet tested; the "
                f"ring needs {require.fleet_share:.1%}"
            )
            blocking.update((id(c.cell), c) for c in checks if not c.ok)
    met = not reasons
    if met and not open_so_far:
        reasons.append("a ring before it is closed")
    blocked = sorted(
        (c for c in checks if id(c.cell) in blocking),
        key=lambda c: (c.status != "fails", -(c.cell.fleet_share or 0.0), c.cell.verdict.severity),
    )
    return RingDecision(
        ring=ring,
        met=met,
        may_enter=met and open_so_far,
        reasons=reasons,
        blocking=blocked,
        allowed=[c for c in checks if c.status == "allowed"],
        passing_share=passing_share,
        blocking_fleet=_fleet([c.cell for c in blocked]),
    )


def _passing_share(ring: Ring, checks: Sequence[CellCheck]) -> float:
    unknown = [c.cell for c in checks if c.cell.fleet_share is None]
    if unknown:
        raise ring.require.place.error(
            f"ring '{ring.name}' needs a share of the fleet, but {len(unknown)} of the run's "
            f"{len(checks)} cells have none (e.g. {unknown[0].id})",
            "give the matrix a fleet: block, or require cells instead of fleet_share",
        )
    tested = share_of(_shares(c.cell for c in checks))
    passing = share_of(_shares(c.cell for c in checks if c.ok))
    return passing.share / tested.share if tested.share > 0 else 0.0


# -- helpers --------------------------------------------------------------------------------------


def _runs(cell: CellResult) -> list[tuple[Verdict, Attribution | None]]:
    """Every run's verdict and attribution: the repeats (every run, the first included, when
    the cell ran N > 1 times), or the cell's own one run."""
    if not cell.repeats:
        return [(cell.verdict, cell.attribution)]
    return [(r.verdict, r.attribution) for r in cell.repeats]


def _kind(verdict: Verdict, who: Attribution | None, ring: Ring) -> Status:
    if verdict is Verdict.PASS:
        return "pass"
    if verdict is Verdict.INFRA_ERROR or who in _NOT_THE_UPDATE:
        return "not_tested"
    return "fails" if verdict in ring.block else "allowed"


def _who(who: Attribution | None) -> str:
    return f"attributed to {who.value}" if who is not None else "not attributed"


def _shares(cells: Iterable[CellResult]) -> list[tuple[Configuration, float | None]]:
    return [(configuration(c.build, c.hardware, c.products), c.fleet_share) for c in cells]


def _fleet(cells: Sequence[CellResult]) -> FleetTotal:
    return share_of(_shares(cells))
