"""The report's numbers: failure rates of repeated cells with a 95% Wilson interval, and the
blast radius -- the share of the fleet the failing cells stand for.
"""

from __future__ import annotations

import math

import pytest

from compatlab.model import Attribution, Repeat, Verdict
from compatlab.report import blast_radius, failure_rate, summarize
from compatlab.report.stats import Z_95, percent, wilson_interval
from tests.support.cells import crashed_cell

# Published values (statsmodels' proportion_confint(method="wilson"), Newcombe 1998 table I).
KNOWN = [
    (0, 10, 0.0, 0.2775),
    (1, 10, 0.0179, 0.4042),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),
    (0, 5, 0.0, 0.4345),
    (1, 5, 0.0362, 0.6245),
]


@pytest.mark.parametrize(("k", "n", "low", "high"), KNOWN)
def test_wilson_interval_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(("k", "n"), [(1, 3), (2, 7), (13, 40), (99, 100)])
def test_wilson_bounds_solve_the_score_equation(k: int, n: int) -> None:
    # The Wilson interval is every p whose score test does not reject: |k - np| = z sqrt(np(1-p))
    # holds exactly at both bounds.
    for p in wilson_interval(k, n):
        assert abs(k - n * p) == pytest.approx(Z_95 * math.sqrt(n * p * (1 - p)), rel=1e-9)


def test_wilson_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


def test_failure_rate_of_a_repeated_cell() -> None:
    repeats = [Repeat(Verdict.PASS)] * 3 + [Repeat(Verdict.CRASH, signature="x")]
    repeats += [Repeat(Verdict.INFRA_ERROR)]
    rate = failure_rate(crashed_cell(repeats=repeats))
    assert rate is not None
    assert (rate.failures, rate.runs, rate.infra) == (1, 4, 1)  # the lab's failure is no verdict
    assert (rate.low, rate.high) == pytest.approx(wilson_interval(1, 4))
    assert rate.ratio == "1/4" and rate.interval == "5% to 70%"
    assert failure_rate(crashed_cell()) is None  # ran once: no rate
    assert failure_rate(crashed_cell(repeats=[Repeat(Verdict.INFRA_ERROR)] * 3)) is None


def test_percent_never_rounds_a_share_away() -> None:
    assert [percent(x) for x in (0.0, 0.001, 0.2249, 0.996, 1.0)] == [
        "0%",
        "<1%",
        "22%",
        ">99%",
        "100%",
    ]


def _shares(*cells: tuple[Verdict, Attribution | None, float | None]) -> list:  # type: ignore[type-arg]
    return [
        crashed_cell(f"b/h/p{n}", verdict=v, attribution=a, fleet_share=s)
        for n, (v, a, s) in enumerate(cells)
    ]


def test_blast_radius_sums_the_failing_cells_shares() -> None:
    cells = _shares(
        (Verdict.BOOT_LOOP, Attribution.CANDIDATE, 0.12),
        (Verdict.CRASH, Attribution.UNCONFIRMED, 0.06),
        (Verdict.HANG, Attribution.CANDIDATE, 0.04),
        (Verdict.CRASH, Attribution.BASELINE, 0.30),  # not the candidate's
        (Verdict.INFRA_ERROR, Attribution.INFRA, 0.20),  # the lab's
        (Verdict.PASS, None, 0.28),
    )
    radius = blast_radius(cells)
    assert radius.cells == 3 and radius.share == pytest.approx(0.22) and radius.unknown == 0
    assert radius.phrase() == "3 failing cells, about 22% of the fleet"
    assert summarize(cells).radius == "3 failing cells, about 22% of the fleet"


def test_blast_radius_without_shares_or_with_some_missing() -> None:
    none = _shares((Verdict.CRASH, Attribution.CANDIDATE, None), (Verdict.PASS, None, None))
    assert blast_radius(none).share is None
    assert summarize(none).radius == ""
    some = _shares(
        (Verdict.CRASH, Attribution.CANDIDATE, 0.5),
        (Verdict.CRASH, Attribution.CANDIDATE, None),
    )
    assert blast_radius(some).phrase() == (
        "2 failing cells, at least 50% of the fleet (1 without a fleet share)"
    )
