"""What a test does when the real lab is not there: skip on a developer's box, fail under CI.

``make test`` (and so CI, which runs it) sets ``COMPATLAB_REQUIRE_LAB=1``: it has just set up
libvirtd, the demo images and payloads, so a real-VM test that cannot reach them is a broken
set-up, not a reason to report green. Anywhere else (``make test-fast``, a bare ``pytest``) the
test is skipped with the same reason.

Only for what the lab provides (libvirtd, images, payloads, qemu tools, root, unshare). A test
that does not apply to the case at hand keeps its plain ``pytest.skip``.

And how much of the lab a real-VM test takes: :func:`guests_of` (its ``guests`` mark).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["DEFAULT_GUESTS", "REQUIRE_LAB", "guests_of", "lab_required", "require_lab"]

#: The environment variable ``make test`` sets.
REQUIRE_LAB = "COMPATLAB_REQUIRE_LAB"


def lab_required() -> bool:
    """True when the run must have the real lab (``COMPATLAB_REQUIRE_LAB=1``)."""
    return os.environ.get(REQUIRE_LAB) == "1"


def require_lab(reason: str) -> NoReturn:
    """Fail under ``make test`` (``COMPATLAB_REQUIRE_LAB=1``), skip otherwise, with ``reason``."""
    if lab_required():
        pytest.fail(
            f"{reason} (make test requires the real lab: libvirtd on qemu:///system, the demo "
            f"images and payloads, root; unset {REQUIRE_LAB} to skip instead)",
            pytrace=False,
        )
    pytest.skip(reason)


#: Guests a real-VM test runs at once unless marked ``@pytest.mark.guests(n)``: tests/lab's
#: most. The fault campaign (tests/reliability/conftest.py) runs beside in what is left.
DEFAULT_GUESTS = 2


def guests_of(node: pytest.Item | pytest.Module) -> int:
    """How many guests a real-VM test (or every test of a module) runs at once."""
    mark = node.get_closest_marker("guests")
    return int(mark.args[0]) if mark is not None else DEFAULT_GUESTS
