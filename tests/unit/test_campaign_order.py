"""The fault campaign's guests and its choice of the next scenario (GuestBudget,
tests/support/faultrun.py; the campaign is tests/reliability/conftest.py).

Beside a tests/lab test that runs two guests the campaign has one. It used to take scenarios
strictly in order, so two-runs (two guests) held the five one-guest signal scenarios behind it
for 14 minutes of the real-VM tier, with the CPU a third to half idle, until the campaign's own
first test widened its budget.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.faultrun import GuestBudget, Outcome, Scenario


def _scenario(name: str, guests: int = 1) -> Scenario:
    def run(_folder: Path) -> Outcome:
        raise AssertionError("not run here")

    return Scenario(name, run, guests, 0)


WIDE = _scenario("two-runs", guests=2)
NARROW = [_scenario(f"signal-{n}") for n in range(3)]
EMPTY = _scenario("storage-full-at-start", guests=0)


def _budget(size: int, free: int | None = None, cap: int = 4) -> GuestBudget:
    budget = GuestBudget(cap=cap, size=size)
    if free is not None:
        budget.free = free
    return budget


def test_a_scenario_wider_than_the_size_lets_the_next_ones_pass() -> None:
    assert _budget(1).next([WIDE, *NARROW]) is NARROW[0]


def test_a_wide_scenario_that_fits_the_size_keeps_its_place() -> None:
    assert _budget(4, free=1).next([WIDE, *NARROW]) is None
    assert _budget(4, free=2).next([WIDE, *NARROW]) is WIDE


def test_in_order_when_everything_fits() -> None:
    assert _budget(4).next([*NARROW, WIDE]) is NARROW[0]


def test_nothing_free_nothing_starts() -> None:
    assert _budget(1, free=0).next(NARROW) is None
    assert _budget(1).next([WIDE]) is None


def test_a_scenario_with_no_guest_starts_even_when_the_size_shrank_below_what_runs() -> None:
    assert _budget(1, free=0).next([WIDE, EMPTY]) is EMPTY
    assert _budget(1, free=-1).next([EMPTY, *NARROW]) is EMPTY


def test_wider_than_the_cap_needs_only_the_cap() -> None:
    huge = _scenario("huge", guests=9)
    budget = _budget(4)
    assert budget.need(huge) == 4
    assert budget.next([huge]) is huge


def test_a_smaller_share_waits_for_the_running_ones_to_give_their_guests_back() -> None:
    budget = _budget(2)
    budget.free -= budget.need(WIDE)  # two-runs started beside a one-guest test
    budget.share(1)  # a two-guest test comes next
    assert (budget.size, budget.free) == (1, -1)
    assert budget.next(NARROW) is None
    budget.free += 2  # two-runs ended
    assert budget.free == 1
    assert budget.next(NARROW) is NARROW[0]


def test_a_share_never_goes_past_the_campaigns_own_budget() -> None:
    budget = _budget(1, cap=1)  # COMPATLAB_RELIABILITY_GUESTS=1
    budget.share(2)
    assert (budget.size, budget.free) == (1, 1)


def test_widened_is_final() -> None:
    budget = _budget(1, cap=3)
    budget.widen()
    assert (budget.size, budget.free) == (3, 3)
    budget.share(1)  # a tests/lab test after the campaign's first test: ignored
    assert (budget.size, budget.free) == (3, 3)


def test_widen_never_passes_the_cap_even_from_a_larger_share() -> None:
    budget = _budget(2, cap=1)
    budget.widen()
    assert (budget.size, budget.free) == (1, 1)
