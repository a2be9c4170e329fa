"""Values the lab puts into guest command lines are quoted for the guest's shell."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from compatlab.guest.quoting import UnsafeValue, quote

HOSTILE = ["acme; touch /tmp/pwned", "$(reboot)", "a b", "`id`", "x'y", "-rf", "*"]


@pytest.mark.parametrize("value", HOSTILE)
def test_posix_quoting_makes_one_literal_word(value: str) -> None:
    out = subprocess.run(
        ["/bin/sh", "-c", f"printf '%s' {quote(value, 'linux')}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == value


def test_windows_values_cmd_reads_literally_stay_as_they_are() -> None:
    assert quote("WinDefend", "windows") == "WinDefend"
    assert quote("D:\\", "windows") == "D:\\"


def test_windows_values_with_spaces_are_double_quoted() -> None:
    assert quote("Sentinel Agent", "windows") == '"Sentinel Agent"'
    assert quote("C:\\Program Files\\", "windows") == '"C:\\Program Files\\\\"'


@pytest.mark.parametrize("value", ["100%PATH%", "a!b", 'say "hi"'])
def test_windows_values_cmd_would_expand_inside_quotes_are_refused(value: str) -> None:
    with pytest.raises(UnsafeValue):
        quote(value, "windows")


@pytest.mark.parametrize("family", ["linux", "windows"])
def test_control_characters_are_refused(family: str) -> None:
    with pytest.raises(UnsafeValue):
        quote("acme\nreboot", family)  # type: ignore[arg-type]


def test_shlex_round_trip() -> None:
    assert shlex.split(quote("a b; c", "linux")) == ["a b; c"]
