"""The fault campaign's choice of the next scenario (tests/reliability/conftest.py).

Beside tests/lab the campaign has one guest. It used to take scenarios strictly in order, so
two-runs (two guests) held the five 1-guest signal scenarios behind it for 14 minutes of the
real-VM tier, with the CPU a third to half idle, until the campaign's own first test widened
the budget.
"""

from __future__ import annotations

from tests.support.faultrun import Outcome, Scenario, next_to_start


def _scenario(name: str, guests: int = 1) -> Scenario:
    def run(_folder: object) -> Outcome:
        raise AssertionError("not run here")

    return Scenario(name, run, guests, 0)


WIDE = _scenario("two-runs", guests=2)
NARROW = [_scenario(f"signal-{n}") for n in range(3)]


def test_a_scenario_wider_than_the_budget_lets_the_next_ones_pass() -> None:
    assert next_to_start([WIDE, *NARROW], free=1, budget=1, cap=4) is NARROW[0]


def test_once_widened_the_wide_scenario_keeps_its_place() -> None:
    # Two guests in the budget, one free: the wide one waits, and nothing passes it.
    assert next_to_start([WIDE, *NARROW], free=1, budget=4, cap=4) is None
    assert next_to_start([WIDE, *NARROW], free=2, budget=4, cap=4) is WIDE


def test_in_order_when_everything_fits() -> None:
    assert next_to_start([*NARROW, WIDE], free=4, budget=4, cap=4) is NARROW[0]


def test_nothing_free_nothing_starts() -> None:
    assert next_to_start(NARROW, free=0, budget=1, cap=4) is None
    assert next_to_start([WIDE], free=1, budget=1, cap=4) is None


def test_a_scenario_with_no_guest_starts_whatever_is_free() -> None:
    empty = _scenario("storage-full-at-start", guests=0)
    assert next_to_start([WIDE, empty], free=0, budget=1, cap=4) is empty


def test_wider_than_the_cap_needs_only_the_cap() -> None:
    huge = _scenario("huge", guests=9)
    assert next_to_start([huge], free=4, budget=4, cap=4) is huge
