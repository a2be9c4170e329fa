"""Driver Verifier: the commands that put named drivers under standard verification.

A cell with ``scenario.verifier: [sensor.sys]`` runs :func:`enable_command` after the
candidate is installed and before its first boot: Driver Verifier's settings take effect at the
next boot, so every boot of the candidate then runs with the driver verified, and a latent bug
(a pool overrun, an IRQL violation, a leaked lock) bugchecks in the lab -- typically
``0xC4 DRIVER_VERIFIER_DETECTED_VIOLATION`` or ``0xC1 SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION``
-- instead of corrupting memory quietly in the field.

Pure: lines for the guest's ``cmd.exe``, built and checked here, run by the scenario.

- ``verifier.exe /standard /driver a.sys b.sys`` -- standard flags (``/flags 0x209BB``) for
  those image names only; after a reboot.
- ``verifier.exe /querysettings`` -- the settings for the next boot, with the driver names:
  :func:`missing_drivers` checks that each asked-for name is listed.
- ``verifier.exe /reset`` -- no verification from the next boot on (rollback, or a rerun that
  must not carry it).

Names are plain ``*.sys`` image names as Driver Verifier wants them (it takes no paths and no
wildcards): :func:`driver_names` refuses anything else with :class:`UnsafeDriverName`.

Not run on Windows here. verifier.exe's exit codes are not documented by Microsoft, so this
module does not judge them: check the outcome with ``/querysettings``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from compatlab.guest.quoting import UnsafeValue

__all__ = [
    "QUERY_SETTINGS_COMMAND",
    "RESET_COMMAND",
    "UnsafeDriverName",
    "driver_names",
    "enable_command",
    "missing_drivers",
    "query_settings_command",
    "reset_command",
]

VERIFIER: Final = "verifier.exe"
QUERY_SETTINGS_COMMAND: Final = f"{VERIFIER} /querysettings"
RESET_COMMAND: Final = f"{VERIFIER} /reset"
# An image name: a letter or digit first, then letters, digits, '_', '-' and '.'; ".sys" last.
# Kernel image names are short; 64 is far past any real one and keeps a typo from growing.
_SYS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,59}\.sys$", re.IGNORECASE)


class UnsafeDriverName(UnsafeValue):
    """A driver name that is not a plain ``*.sys`` image name."""


def driver_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` checked and de-duplicated (case-insensitively, first spelling kept).

    Refused, with the reason: an empty list, a path (``\\`` or ``/``), a wildcard, a name that
    does not end in ``.sys``, spaces or any character cmd.exe would read.
    """
    if isinstance(names, str):
        raise TypeError("driver names come as a list, e.g. ['sensor.sys'], not one string")
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str):
            raise UnsafeDriverName(f"driver name {name!r} is not text")
        if "\\" in name or "/" in name:
            raise UnsafeDriverName(
                f"driver name {name!r} is a path: Driver Verifier takes image names "
                "such as sensor.sys"
            )
        if "*" in name or "?" in name:
            raise UnsafeDriverName(
                f"driver name {name!r} holds a wildcard, which Driver Verifier does not support"
            )
        if not name.lower().endswith(".sys"):
            raise UnsafeDriverName(f"driver name {name!r} is not a .sys image name")
        if not _SYS_NAME.match(name):
            raise UnsafeDriverName(
                f"driver name {name!r}: only letters, digits, '_', '-' and '.' before .sys"
            )
        seen.setdefault(name.lower(), name)
    if not seen:
        raise UnsafeDriverName("no driver named: verify at least one .sys image")
    return tuple(seen.values())


def enable_command(drivers: Sequence[str]) -> str:
    """``verifier.exe /standard /driver a.sys b.sys``: standard verification from the next boot.

    Replaces whatever verification the image had: Driver Verifier keeps one set of settings.
    """
    return f"{VERIFIER} /standard /driver {' '.join(driver_names(drivers))}"


def query_settings_command() -> str:
    """``verifier.exe /querysettings``: the drivers and flags in force from the next boot."""
    return QUERY_SETTINGS_COMMAND


def reset_command() -> str:
    """``verifier.exe /reset``: no driver verified from the next boot on."""
    return RESET_COMMAND


def missing_drivers(querysettings_output: str, drivers: Sequence[str]) -> tuple[str, ...]:
    """The names in ``drivers`` that ``verifier /querysettings`` output does not list.

    A name counts as listed when it stands as a whole word in the output (any case), so
    ``sensor.sys`` is not found inside ``mysensor.sys``. Empty: every driver is set up.
    """
    listed = {
        word.lower() for word in re.findall(r"[A-Za-z0-9_.-]+\.sys\b", querysettings_output, re.I)
    }
    return tuple(name for name in driver_names(drivers) if name.lower() not in listed)
