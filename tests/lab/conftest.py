"""Order of the real-VM tests in this folder: the modules that run two guests at once first.

The fault campaign (tests/reliability/conftest.py) runs beside these tests, in the guests they
leave free of its ``SHARED_GUESTS``. A module marked ``@pytest.mark.guests(1)`` runs at most one
guest at a time; unmarked, a module may run two (:func:`tests.support.faultrun.guests_of`).
Putting the one-guest modules last gives the campaign one long stretch with two guests (its
two-runs scenario needs both) instead of short ones it could not use, and never asks it to
give guests back in between. Modules stay whole (their module fixtures run once) and keep their
order within each group.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.faultrun import guests_of

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slots = [i for i, item in enumerate(items) if HERE in item.path.parents]
    ours = [items[i] for i in slots]
    ours.sort(key=lambda item: -guests_of(item))  # stable: file order within each group
    for slot, item in zip(slots, ours, strict=True):
        items[slot] = item
