"""require_lab: a missing lab fails the test under ``make test``, skips it anywhere else."""

from __future__ import annotations

import pytest

from tests.support.lab import REQUIRE_LAB

pytest_plugins = ["pytester"]

NEEDS_LAB = """
from tests.support.lab import require_lab

def test_needs_the_lab():
    require_lab("no libvirtd at qemu:///system")
"""


def test_require_lab_fails_when_make_test_requires_the_lab(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE_LAB, "1")
    pytester.makepyfile(NEEDS_LAB)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["no libvirtd at qemu:///system (make test requires the real lab: *"]
    )


@pytest.mark.parametrize("value", [None, "0", ""])
def test_require_lab_skips_otherwise(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(REQUIRE_LAB, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_LAB, value)
    pytester.makepyfile(NEEDS_LAB)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED *no libvirtd at qemu:///system"])
