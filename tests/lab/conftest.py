"""Order of the real-VM tests in this folder: the modules that run two guests at once first.

The fault campaign (tests/reliability/conftest.py) runs beside these tests, in the guests they
leave free of its ``SHARED_GUESTS``. A module marked ``@pytest.mark.guests(1)`` runs at most one
guest at a time; unmarked, a module may run two (:func:`tests.support.lab.guests_of`).
Putting the one-guest modules last gives the campaign one long stretch with two guests (its
two-runs scenario needs both) instead of short ones it could not use, and never asks it to
give guests back in between. Modules stay whole (their module fixtures run once: the order
goes by the module's mark) and keep their order within each group. ``--ff`` and ``--nf``
re-sort the items after this hook; the campaign then gives guests back when a two-guest
module follows a one-guest one, and the scenarios running finish first (four guests for a
while).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.lab import guests_of

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slots = [i for i, item in enumerate(items) if HERE in item.path.parents]
    ours = [items[i] for i in slots]
    ours.sort(key=lambda item: -guests_of(item.getparent(pytest.Module) or item))  # stable
    for slot, item in zip(slots, ours, strict=True):
        items[slot] = item
