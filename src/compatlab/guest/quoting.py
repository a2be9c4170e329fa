"""Quoting a value for the guest's shell, before it is put into a command line the lab builds.

The lab fills templates of its own and of the catalog's (``mount_payload``,
``unmount_payload``, ``service_check``) with values from catalogs: a payload path, a volume
label, a service name. Each value is quoted for the shell that will read the line:

- Linux guests run commands with ``/bin/sh -c``: POSIX quoting (:func:`shlex.quote`).
- Windows guests run them with ``cmd.exe /c``. cmd has no escape that survives every context, so
  a value is either made only of characters cmd reads literally (left as it is) or wrapped in
  double quotes -- and a value cmd would still expand or split inside quotes (``%``, ``!``,
  ``"``, a line break) is refused: a name like that has no business in a lab catalog.
"""

from __future__ import annotations

import re
import shlex
from typing import Literal

__all__ = ["UnsafeValue", "quote"]

_CMD_LITERAL = re.compile(r"^[A-Za-z0-9_\-.:\\/]+$")
_CMD_REFUSED = re.compile(r'[%!"\x00-\x1f\x7f]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafeValue(ValueError):
    """A value that cannot be quoted safely for the guest's shell."""


def quote(value: str, os_family: Literal["linux", "windows"]) -> str:
    """``value`` as one word for the guest's shell (``/bin/sh`` or ``cmd.exe``)."""
    if _CONTROL.search(value):
        raise UnsafeValue(f"control characters in {value!r}")
    if os_family == "linux":
        return shlex.quote(value)
    if _CMD_LITERAL.match(value):
        return value
    if _CMD_REFUSED.search(value):
        raise UnsafeValue(f"{value!r} holds a character cmd.exe expands even inside quotes")
    if value.endswith("\\"):
        # "C:\dir\" would read as an escaped quote to the program's argument parser.
        value += "\\"
    return f'"{value}"'
